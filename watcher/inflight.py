"""The broker transport's bound on what is in flight: the watcher puts each file's bytes in
Redis (moodwatch.claims), sends no more than MOODWATCH_MAX_INFLIGHT_BYTES and _JOBS ahead of the
rows, and learns from the rows and the claim keys which files are done or lost."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace

from sqlalchemy.orm import sessionmaker

from db.repository import outcomes_of
from moodwatch.admission import FileRefused, read_regular_file
from moodwatch.claims import ClaimStore
from moodwatch.files import event_id_for, printable
from moodwatch.jobs import FileJob, claim_key
from moodwatch.outcome import Outcome
from moodwatch.queue import BROKER_ERRORS
from moodwatch.settings import Settings
from watcher.records import database_unavailable

log = logging.getLogger("moodwatch.watcher")

# How often the watcher asks which files it sent are recorded (and moves them): a file leaves
# the inbox within about this long of its row.
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class InFlight:
    """A file whose bytes the watcher put in Redis and whose row it has not seen yet."""

    path: str
    size: int
    job: int  # the number of the batch job that carried it


@dataclass(frozen=True)
class Settled:
    """What one look at the files in flight found."""

    recorded: list[Outcome]  # their rows appeared: to be moved now
    lost: list[str]  # event ids whose bytes left Redis with no row: to be sent again


class InFlightBound:
    def __init__(self, settings: Settings, claims: ClaimStore, sessions: sessionmaker | None):
        self.settings = settings
        self.claims = claims
        self.sessions = sessions
        self._files: dict[str, InFlight] = {}  # by event id, until its row (or its key's loss) is seen
        self._jobs_sent = 0
        self._poll_at = 0.0
        self._waiting = False  # the bound holds the pending files back (said once)

    def __len__(self) -> int:
        return len(self._files)

    def counts(self) -> tuple[int, int, int]:
        """Files, bytes and batch jobs sent whose rows have not been seen yet."""
        files = self._files.values()
        return len(files), sum(f.size for f in files), len({f.job for f in files})

    def due(self, now: float) -> bool:
        return bool(self._files) and now >= self._poll_at

    def fit(self, batch: list[FileJob]) -> list[FileJob]:
        """The first files of batch that fit under the bound. With nothing in flight the first
        file always goes, whatever its size: a file larger than the bound must not wait forever."""
        _files, held, jobs = self.counts()
        room = self.settings.max_inflight_bytes - held
        out: list[FileJob] = []
        if jobs < self.settings.max_inflight_jobs:
            for m in batch:
                size = _size_now(m.path)
                if size > room and (out or self._files):
                    break
                room -= size
                out.append(m)
        if not out and not self._waiting:
            log.info("%d file(s), %d bytes in %d job(s) in flight (MOODWATCH_MAX_INFLIGHT_BYTES, "
                     "_JOBS): waiting for their rows before sending more", *self.counts())
        self._waiting = not out
        return out

    def stage(self, jobs: list[FileJob]) -> list[FileJob]:
        """Put each file's bytes under its claim key (one round trip); returns the files with
        their claims. A file that changed or vanished since it was checked is left out: a
        changed file is a new arrival the watcher sees again."""
        staged, blobs = [], {}
        for m in jobs:
            data = _bytes_of(m, self.settings.max_file_bytes)
            if data is None:
                log.info("%s: changed or gone since it was checked; not sent", printable(m.path))
                continue
            key = claim_key(m.event_id)
            blobs[key] = data
            staged.append(m.model_copy(update={"claim": key, "size": len(data)}))
        if blobs:
            self.claims.put(blobs)
        return staged

    def note(self, sent: list[FileJob]) -> None:
        """The files of one batch job just sent."""
        for m in sent:
            self._files[m.event_id] = InFlight(m.path, m.size or 0, self._jobs_sent)
        self._jobs_sent += 1

    def settle(self) -> Settled:
        """Files sent whose rows appeared leave the bound, to be moved now. Files whose keys are
        gone with no row were lost (their bytes expired, Redis restarted empty): they leave it
        too, to be sent again by the rescan."""
        self._poll_at = time.monotonic() + POLL_SECONDS
        if self.sessions is None:
            return Settled([], [])
        ids = list(self._files)
        try:
            # Keys first, rows second: a worker deletes a key only after its rows are committed,
            # so a key seen gone before the rows were read, with no row, has no row coming.
            gone = self.claims.missing([claim_key(e) for e in ids])
            with self.sessions() as session:
                rows = outcomes_of(session, ids)
        except BROKER_ERRORS as exc:
            log.warning("broker unreachable, cannot tell which sent files are done: %s", exc)
            return Settled([], [])
        except Exception as exc:  # the database is away: nothing can be told; try next time
            database_unavailable("cannot tell which sent files are recorded", exc)
            return Settled([], [])
        recorded = [replace(r, path=self._files.pop(r.event_id).path) for r in rows]
        lost = [e for e in ids if claim_key(e) in gone and e in self._files]
        for eid in lost:
            log.warning("%s: its bytes left Redis with no row (expired, or Redis restarted); "
                        "sending it again", printable(self._files.pop(eid).path))
        return Settled(recorded, lost)


def _size_now(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0  # gone: staging leaves it out


def _bytes_of(job: FileJob, max_bytes: int) -> bytes | None:
    """The file's bytes, read safely, if it is still the arrival that was checked."""
    try:
        got = read_regular_file(job.path, max_bytes)
    except (FileRefused, OSError):
        return None
    if event_id_for(job.path, got.stat) != job.event_id or got.sha256 != job.sha256:
        return None
    return got.data
