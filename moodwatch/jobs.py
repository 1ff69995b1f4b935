"""The job message: one accepted file, as the watcher sends it and a worker reads it.

One type for both sides of the wire (Celery carries it as JSON, `FileJob.wire()`). A worker
trusts none of it: anyone who can write to the broker can write one, so every field is
validated and the bytes are checked against `size` and `sha256` (broker transport) or read
from the path and hashed there (shared transport, where the message's hash is never used).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

# How many workers try to reach a file before it gets its `failed` row (shared transport).
UNREACHABLE_ATTEMPTS = 3
CLAIM_PREFIX = "moodwatch:claim:"
_EVENT_ID = re.compile(r"^[0-9a-f]{40}$")


def claim_key(event_id: str) -> str:
    """The Redis key of a file's bytes (broker transport): one per arrival, so a resend overwrites
    its own bytes instead of adding a copy."""
    return f"{CLAIM_PREFIX}{event_id}"


def path_problem(path: Any) -> str | None:
    if not isinstance(path, str):
        return "not a string"
    if not 0 < len(path) <= 4096:
        return "empty or longer than 4096 characters"
    return "NUL byte in path" if "\x00" in path else None


def _wire_path(value: Any) -> str:
    # A plain validator: the path may carry the surrogate escapes of a name that is not UTF-8,
    # which must reach the row exactly as the watcher saw it.
    problem = path_problem(value)
    if problem:
        raise PydanticCustomError("path", problem)
    return value


class FileJob(BaseModel):
    """One file of a classify job. Extra fields are ignored (an older or newer sender's)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: StrictStr = Field(pattern=_EVENT_ID.pattern)
    path: Annotated[str, PlainValidator(_wire_path)]
    received_at: datetime | None = None
    # The watcher's hash of the bytes it accepted. Shared transport: never used (the worker hashes
    # what it reads). Broker transport: the bytes received must have it.
    sha256: StrictStr | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    attempts: int = 0  # workers that could not reach the file so far (shared transport)
    claim: StrictStr | None = None  # where the bytes wait in Redis (broker transport)
    size: int | None = Field(None, ge=0)  # their length (broker transport)

    @field_validator("attempts")
    @classmethod
    def _clamp(cls, value: int) -> int:
        # A forged count must not buy hundreds of redeliveries nor skip them all.
        return min(max(value, 0), UNREACHABLE_ATTEMPTS - 1)

    @model_validator(mode="after")
    def _whole_claim(self) -> FileJob:
        # A claim names this arrival's key only: a forged one must not make a worker read, and
        # then delete, some other key of the broker.
        if self.claim is not None and (self.claim != claim_key(self.event_id) or self.size is None
                                       or self.sha256 is None):
            raise PydanticCustomError("claim", "a claim must be this event's key, with size and sha256")
        return self

    @property
    def arrived(self) -> datetime:
        """When the watcher accepted it (aware; naive times are taken as UTC)."""
        when = self.received_at or datetime.now(UTC)
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    def wire(self) -> dict[str, Any]:
        """The JSON-ready form Celery carries (times as ISO text; unset fields left out)."""
        out = self.model_dump(exclude_none=True)
        if self.received_at is not None:
            out["received_at"] = self.received_at.isoformat()
        return out

    def handed_back(self) -> FileJob:
        """The same file for another worker to try (one more attempt counted)."""
        return self.model_copy(update={"attempts": self.attempts + 1})
