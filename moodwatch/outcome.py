"""One file's outcome: the record a results row is made from and read back as, one field per
column of db.models.Result but its id. Writers build it with `Outcome.new`; db.repository turns
it into the mapping the database takes at the insert, and moodwatch.outcome_moves moves files by
it. Imports nothing of the project but moodwatch.vocab, so the core and db can both use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from moodwatch.vocab import STATUSES, Status


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How one file event ended. Frozen: a changed outcome is a new one (dataclasses.replace)."""

    event_id: str
    path: str  # as received (a row read back has it printable: the watcher moves by its own)
    received_at: datetime
    status: Status
    file_name: str
    stored_path: str | None  # where the file is now (None only in a row that never said)
    path_bytes: bytes | None = None  # the path's bytes when it is not UTF-8 (set at the insert)
    sha256: str | None = None  # of the bytes classified or rejected, when they were read
    label: str | None = None
    confidence: float | None = None
    score: float | None = None
    model_version: str | None = None
    error: str | None = None
    duplicate_of: int | None = None  # the id of the first row of the same bytes
    classified_at: datetime | None = None
    processing_ms: float | None = None
    human_label: str | None = None
    reviewed_at: datetime | None = None
    faces: list[Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", status_of(self.status))  # a member, whichever word came

    @classmethod
    def new(cls, event_id: str, path: str, received_at: datetime, *, status: str,
            **fields: Any) -> Outcome:
        """A new outcome, its file named by its path and still there; fields set the others. The
        status has no default: every caller says which outcome it records (a default "failed"
        hid a forgotten one)."""
        fields.setdefault("file_name", os.path.basename(path))
        fields.setdefault("stored_path", path)
        return cls(event_id=event_id, path=path, received_at=received_at, status=status_of(status),
                   **fields)


def status_of(word: str) -> Status:
    """The status a word names; a ValueError that lists the statuses if it names none."""
    if word not in STATUSES:
        raise ValueError(f"unknown status {word!r}; one of {', '.join(STATUSES)}")
    return Status(word)
