"""Accepted files waiting to be sent, grouped into batch jobs of MOODWATCH_BATCH_SIZE (or what
MOODWATCH_BATCH_WAIT gathered). A broker outage keeps them, retried with a growing backoff; a
file found recorded already (a restart) is not sent again."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy.orm import sessionmaker

from moodwatch.files import printable
from moodwatch.jobs import FileJob
from moodwatch.queue import BROKER_ERRORS
from moodwatch.settings import Settings
from watcher.inflight import InFlightBound
from watcher.records import already_recorded
from watcher.sender import Sender

log = logging.getLogger("moodwatch.watcher")


@dataclass(frozen=True)
class Flushed:
    """What one flush did with the pending files."""

    sent: list[FileJob] = field(default_factory=list)
    recorded: dict[str, str] = field(default_factory=dict)  # event id -> path: had a row, not sent


class Outbox:
    def __init__(self, settings: Settings, send: Sender, sessions: sessionmaker | None,
                 bound: InFlightBound | None):
        self.settings = settings
        self.send = send
        self.sessions = sessions
        self.bound = bound  # the broker transport's bound on what is in flight; None: shared files
        self._pending: list[FileJob] = []
        self._since = 0.0  # when the oldest pending file was queued (monotonic)
        self._retry_at = 0.0
        self._backoff = 1.0

    def __len__(self) -> int:
        return len(self._pending)

    def paths(self) -> list[str]:
        return [m.path for m in self._pending]

    def event_ids(self) -> set[str]:
        return {m.event_id for m in self._pending}

    def add(self, job: FileJob) -> None:
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(job)

    def due(self, now: float) -> bool:
        """A full batch is waiting, or the oldest file has waited MOODWATCH_BATCH_WAIT."""
        return bool(self._pending) and (len(self._pending) >= self.settings.batch_size
                                        or now - self._since >= self.settings.batch_wait)

    def flush(self, now: float, force: bool = False) -> Flushed:
        """Send the pending files, batch by batch, until none is left, the in-flight bound is
        reached or the sender fails (the files are kept); `force` ignores the retry backoff."""
        sent: list[FileJob] = []
        recorded: dict[str, str] = {}
        if not self._pending or (now < self._retry_at and not force):
            return Flushed()
        while self._pending:
            batch = self._pending[: self.settings.batch_size]
            if self.bound is not None and not (batch := self.bound.fit(batch)):
                return Flushed(sent, recorded)  # the bound is reached: wait for rows
            done = already_recorded(self.sessions, [m.event_id for m in batch])
            carried = self._send_or_keep([m for m in batch if m.event_id not in done], now)
            if carried is None:
                return Flushed(sent, recorded)
            del self._pending[: len(batch)]
            self._note_sent(carried)
            sent += carried
            recorded.update({m.event_id: m.path for m in batch if m.event_id in done})
        self._since = now
        return Flushed(sent, recorded)

    def _send_or_keep(self, jobs: list[FileJob], now: float) -> list[FileJob] | None:
        """Send one batch job; returns the files it carried, or None when they are kept."""
        try:
            carried = self._send(jobs) if jobs else []
        except BROKER_ERRORS as exc:
            self._retry_at = now + self._backoff
            log.warning("broker unreachable (%s: %s): %d file(s) kept, retrying in %.0fs",
                        exc.__class__.__name__, exc, len(self._pending), self._backoff)
            self._backoff = min(30.0, self._backoff * 2)
            return None
        except Exception:  # a bug, not an outage: said with its traceback; the files are kept
            self._retry_at = now + 30.0
            log.exception("sending %d file(s) failed (not a broker outage); kept, retrying in 30s",
                          len(jobs))
            return None
        self._backoff = 1.0
        return carried

    def _send(self, jobs: list[FileJob]) -> list[FileJob]:
        if self.bound is not None:
            jobs = self.bound.stage(jobs)
        if jobs:
            self.send([m.wire() for m in jobs])
        return jobs

    def _note_sent(self, carried: list[FileJob]) -> None:
        for m in carried:
            log.info("%s: queued", printable(m.path))
        if self.bound is not None:
            self.bound.note(carried)
