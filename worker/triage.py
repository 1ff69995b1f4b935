"""The checks before the model. Shared transport: the path must be inside the inbox or registered
by `submit`, the watcher's checks on its name are applied again, and the file is admitted as the
watcher admits it (moodwatch.admission: read once, safely, hashed here, refused in the same
words); the message's hash is never used. Broker transport: see worker.received.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker

from db.repository import submitted_paths
from moodwatch.admission import OUTSIDE, Limits, Refused, admit, cannot_read
from moodwatch.claims import ClaimStore
from moodwatch.files import located_inside, printable
from moodwatch.jobs import UNREACHABLE_ATTEMPTS
from moodwatch.outcome import Outcome
from moodwatch.settings import Settings
from moodwatch.vocab import Status
from worker.items import Job, Triage, name_refusal, row_of
from worker.received import triage_claims

log = logging.getLogger("moodwatch.worker")


def refusal(job: Job, in_inbox: bool, inbox: Path, submitted: dict[str, str]) -> str | None:
    """Why the watcher would never have sent this path, or None: its checks, applied again
    (inbox: the inbox's real path, resolved once for the batch)."""
    if not in_inbox and submitted.get(job.event_id) != printable(job.path):
        return "refused: the path is neither in the inbox nor a file `moodwatch submit` registered"
    return name_refusal(job.path, inbox if in_inbox else None)


def _refused_status(reason: str) -> Status:
    """What the file is (a link, a FIFO, too large, not a whole image) is a rejection, as the
    watcher records it. A file this worker cannot read, or one that lies outside the inbox (a
    folder on the way swapped for a link after the watcher's check), is a failure: nothing is
    known of the file itself, and it is not moved to the rejected folder."""
    # cannot_read of an error without text: the words every such refusal starts with.
    unreadable = reason.startswith(cannot_read(OSError()))
    return Status.FAILED if unreadable or reason == OUTSIDE else Status.REJECTED


def read(job: Job, settings: Settings, root: Path | None, now: datetime) -> Job | Outcome:
    """The job with its file's bytes, admitted; or its row when it cannot be classified. A file
    of the inbox must really lie in it (root); one `submit` registered lies where it was
    registered (root None)."""
    try:
        got = admit(job.path, root, Limits(settings.max_file_bytes, settings.max_pixels))
    except OSError as exc:  # the path's lstat (a folder on the way that cannot be searched)
        return row_of(job, status=Status.FAILED, classified_at=now, error=cannot_read(exc))
    if got is None:
        return row_of(job, status=Status.FAILED, classified_at=now,
                      error=f"file not found or unreadable on this worker: {job.path} "
                      f"(tried by {job.attempts + 1} worker runs)")
    if isinstance(got, Refused):
        return row_of(job, status=_refused_status(got.reason), error=got.reason, classified_at=now)
    return replace(job, sha256=got.sha256, data=got.data, image=got.image)


def triage(jobs: list[Job], settings: Settings, sessions: sessionmaker, now: datetime,
           hand_back: bool, claims: ClaimStore | None = None) -> Triage:
    """Refuse what the watcher would not send, hand unreachable files on (when `hand_back`: to any
    worker, later), read the rest. With `claims` (broker transport) the bytes come from Redis."""
    if claims is not None:
        return triage_claims(jobs, claims, settings, now)
    inbox = settings.inbox_dir.resolve()
    in_inbox = [located_inside(j.path, inbox) for j in jobs]
    with sessions() as session:
        submitted = submitted_paths(session, [j.event_id for j, inside in zip(jobs, in_inbox, strict=True)
                                              if not inside])
    rows: list[Outcome] = []
    taken: list[Job] = []
    handed_back: list[dict[str, Any]] = []
    for job, job_in_inbox in zip(jobs, in_inbox, strict=True):
        reason = refusal(job, job_in_inbox, inbox, submitted)
        if reason is not None:
            log.warning("%s: %s", printable(job.path), reason)
            rows.append(row_of(job, status=Status.FAILED, error=reason, classified_at=now))
        elif hand_back and not os.path.lexists(job.path) and job.attempts + 1 < UNREACHABLE_ATTEMPTS:
            # Maybe this worker lacks the mount: hand the file to any worker, later.
            handed_back.append(job.item.handed_back().wire())
        else:
            # The bytes held for a batch are bounded: batch size x MOODWATCH_MAX_FILE_BYTES.
            got = read(job, settings, inbox if job.event_id not in submitted else None, now)
            if isinstance(got, Job):
                taken.append(got)
            else:
                rows.append(got)
    return Triage(rows=rows, jobs=taken, handed_back=handed_back)
