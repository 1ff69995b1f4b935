"""The items of a job as this worker takes them: each validated on its own into a `Job`, or the
`failed` outcome of an item that is not what it claims, and the outcomes (moodwatch.outcome) a
job's rows are written from.

Nothing in a message is trusted: anyone who can write to the broker can write one. A malformed
item gets its own row and the others go on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.orm import sessionmaker

from db.repository import recorded_event_ids

if TYPE_CHECKING:  # the type only: moodwatch.images loads OpenCV
    from moodwatch.images import ImageInfo
from moodwatch.admission import not_accepted
from moodwatch.filters import is_ignored
from moodwatch.images import extension_allowed
from moodwatch.jobs import FileJob
from moodwatch.outcome import Outcome
from moodwatch.vocab import Status


@dataclass
class Job:
    """One file of the batch: the message as validated, and the bytes this worker got."""

    item: FileJob
    received_at: datetime  # aware: the message's time, or when this worker took the job
    sha256: str | None = None  # of the bytes this worker got, never the message's word for it
    data: bytes | None = None  # those bytes, until they are classified
    image: ImageInfo | None = None  # their inspection at admission, so the decoder does not repeat it

    @property
    def event_id(self) -> str:
        return self.item.event_id

    @property
    def path(self) -> str:
        return self.item.path

    @property
    def attempts(self) -> int:
        return self.item.attempts


@dataclass(frozen=True)
class Triage:
    """What the checks before the model make of a batch's jobs."""

    rows: list[Outcome] = field(default_factory=list)  # outcomes known without the model
    jobs: list[Job] = field(default_factory=list)  # files read, to classify
    handed_back: list[dict[str, Any]] = field(default_factory=list)  # items for any worker, later
    lost: int = 0  # claims whose bytes are gone: no row, the watcher sends the file again


def row_of(job: Job, **fields: Any) -> Outcome:
    """The outcome of a job, under its event id and with the hash of the bytes this worker got."""
    return Outcome.new(job.event_id, job.path, job.received_at, sha256=job.sha256, **fields)


def refused_row(item: Any, kind: str, error: str, now: datetime) -> Outcome:
    """The `failed` row of an item that is not what it claims. It never takes the event id the
    item claims (a forged item must not block a real file's event): its id is derived from the
    item itself, so a redelivery finds it."""
    digest = hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()
    path = item.get("path") if isinstance(item, dict) else None
    return Outcome.new(f"{kind}-{digest[:30]}", path if isinstance(path, str) else "(no path)", now,
                       status=Status.FAILED, error=error[:500], classified_at=now)


def parse_item(item: Any, now: datetime) -> Job | Outcome:
    """A job, or the `failed` row of an item that is malformed."""
    try:
        ok = FileJob.model_validate(item)
    except ValidationError as exc:
        reasons = [f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors()]
        return refused_row(item, "malformed", f"malformed job item: {'; '.join(reasons)}", now)
    return Job(ok, ok.arrived if ok.received_at else now)


def name_refusal(path: str, root: Path | None = None) -> str | None:
    """Why the watcher would never have sent a file of this name, or None: its checks on the name,
    applied again, in its words (a hidden file has none: the watcher records nothing for it)."""
    if is_ignored(path, root):
        return "refused: a hidden or temporary file (the watcher waits until it is renamed)"
    if not extension_allowed(path):
        return f"refused: {not_accepted(path)}"
    return None


def skip_recorded(parsed: list[Job | Outcome],
                  sessions: sessionmaker) -> tuple[list[Job], list[Outcome], set[str]]:
    """The jobs and the malformed items' rows whose events have no row yet (a redelivered job
    adds nothing), and the jobs' event ids that are recorded already."""
    jobs = [p for p in parsed if isinstance(p, Job)]
    bad = [p for p in parsed if isinstance(p, Outcome)]
    with sessions() as session:
        done = recorded_event_ids(session, [j.event_id for j in jobs] + [r.event_id for r in bad])
    return ([j for j in jobs if j.event_id not in done], [r for r in bad if r.event_id not in done],
            {j.event_id for j in jobs if j.event_id in done})
