"""The watcher loop: events and rescans feed a stability tracker; settled files are validated,
rejected ones recorded at once, accepted ones grouped into batch jobs for the workers.

The Watcher composes one helper per step, read in the order of the loop: the intake of events
(watcher.events), the rescan's walk (watcher.rescan), the rejections (watcher.rejections), the
pending files and their sending (watcher.outbox), the broker transport's bound on what is in
flight (watcher.inflight) and the moves out of the inbox (watcher.moves); watcher.ledger keeps
what this process handled.

With MOODWATCH_TRANSPORT=broker the watcher is the inbox's only reader and mover: it puts each
file's bytes in Redis (moodwatch.claims) within a bound on what is in flight, and moves each file
as soon as its row appears."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from db.repository import recorded_event_ids
from moodwatch.claims import ClaimStore, open_claims
from moodwatch.files import printable
from moodwatch.jobs import FileJob
from moodwatch.settings import Settings
from watcher.events import Intake
from watcher.inflight import POLL_SECONDS, InFlightBound
from watcher.ledger import Ledger
from watcher.moves import Mover
from watcher.outbox import Outbox
from watcher.records import database_unavailable
from watcher.rejections import Rejections, unchecked
from watcher.rescan import remove_emptied, walk_inbox
from watcher.sender import Sender
from watcher.stability import StabilityTracker
from watcher.validation import Checked, check_arrival

log = logging.getLogger("moodwatch.watcher")


@dataclass(frozen=True)
class Backlog:
    """What the watcher holds and has not finished with."""

    pending: tuple[str, ...]  # accepted files not sent yet
    rejects: tuple[str, ...]  # rejected files whose rows are not written yet
    in_flight: int  # files sent whose rows have not been seen (broker transport)
    settling: int  # files noticed and not settled yet


class Watcher:
    def __init__(self, settings: Settings, send: Sender, sessions: sessionmaker | None,
                 polling: bool = False, claims: ClaimStore | None = None):
        self.settings = settings
        self.inbox = settings.inbox_dir
        self.sessions = sessions
        self.polling = polling
        broker = settings.transport == "broker"
        if claims is None and broker:
            claims = open_claims(settings)
        self.tracker = StabilityTracker(settings.settle_seconds)
        self.intake = Intake(self.inbox, self.request_rescan)
        self.handled = Ledger()
        self.rejections = Rejections(sessions, settings.max_file_bytes)
        self.bound = InFlightBound(settings, claims, sessions) if broker else None
        self.outbox = Outbox(settings, send, sessions, self.bound)
        self.mover = Mover(settings, sessions, any_age=broker)
        self._rescan_at = 0.0

    # events -------------------------------------------------------------------------------
    def notice(self, path: str) -> None:
        self.intake.notice(path)

    def request_rescan(self) -> None:
        self._rescan_at = 0.0

    def start(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.intake.start(self.polling)
        self.rescan()  # files dropped while we were down

    def stop(self) -> None:
        self.intake.stop()

    # the loop -----------------------------------------------------------------------------
    def run(self, stop_event: threading.Event, tick: float = 0.1) -> None:
        self.start()
        try:
            while not stop_event.is_set():
                self.step()
                stop_event.wait(tick)
            self.drain()
        finally:
            self.stop()

    def step(self) -> None:
        now = time.monotonic()
        if now >= self._rescan_at:
            self.rescan()
        for path in self.intake.take():
            self.tracker.touch(path)
        for path in self.tracker.due():
            self.handle(path)
        self.record_rejections()
        if self.bound is not None and self.bound.due(now):
            self._settle_inflight()
        if self.outbox.due(now):
            self._flush(now)

    def drain(self) -> None:
        """On shutdown: send what is pending (files not yet settled are found again on start)."""
        self.record_rejections()
        self._flush(time.monotonic(), force=True)

    def backlog(self) -> Backlog:
        return Backlog(pending=tuple(self.outbox.paths()), rejects=tuple(self.rejections.paths()),
                       in_flight=len(self.bound) if self.bound is not None else 0,
                       settling=len(self.tracker))

    def in_flight(self) -> tuple[int, int, int]:
        """Files, bytes and batch jobs sent whose rows have not been seen yet (broker transport)."""
        return self.bound.counts() if self.bound is not None else (0, 0, 0)

    # the rescan ---------------------------------------------------------------------------
    def rescan(self) -> None:
        """Walk the inbox for files without a recorded outcome (missed events, restarts), and
        reconcile with the database: a job can be lost (its retries used up during a long
        database outage, a broker restarted without persistence), and its files would then wait
        in the inbox with no row until a restart."""
        self._rescan_at = time.monotonic() + self.settings.rescan_seconds
        waiting = self.outbox.event_ids() | self.rejections.event_ids()
        self.handled.prune_gone(waiting)
        self._resend_lost(waiting)
        if not self.inbox.is_dir():
            return
        walk = walk_inbox(self.inbox)
        for path, eid in walk.files.items():
            if path not in self.tracker and eid not in self.handled:
                self.tracker.touch(path)
        self.mover.finish(walk.found)
        remove_emptied(walk.bare, self.settings.settle_seconds)

    def _resend_lost(self, waiting: set[str]) -> None:
        """Forget files sent long ago that still have no row, so the walk sends them again
        (a resend is safe: a job whose event is recorded adds nothing)."""
        stale = self.handled.unrecorded_since(time.monotonic() - self.settings.resend_seconds, waiting)
        if not stale or self.sessions is None:
            return
        try:
            with self.sessions() as session:
                recorded = recorded_event_ids(session, stale)
        except Exception as exc:  # the database is away: nothing can be told; try next time
            database_unavailable("cannot tell which sent files have rows", exc)
            return
        for eid in stale:
            if eid in recorded:
                self.handled.mark_recorded(eid)
                continue
            log.info("%s: no row %.0fs after it was sent; sending it again",
                     printable(self.handled.path_of(eid)), self.settings.resend_seconds)
            self.handled.forget(eid)

    # settled files ------------------------------------------------------------------------
    def handle(self, path: str) -> None:
        """Check one settled file, and take it."""
        try:
            checked = check_arrival(path, self.inbox, self.settings.max_file_bytes, self.settings.max_pixels)
        except Exception as exc:  # one odd file must never stop the watcher (and every other file)
            log.exception("%s: could not be checked", printable(path))
            checked = unchecked(path, exc)
        if checked is not None:
            self.take(checked)

    def take(self, checked: Checked, root: Path | None = None) -> None:
        """Queue an accepted file, or keep a rejected one for its row. `root` is the folder the
        file was checked against (the inbox unless said)."""
        if checked.event_id in self.handled or checked.event_id in self.rejections:
            return
        if checked.rejected:
            self.rejections.keep(checked, root or self.inbox)
            return
        self.outbox.add(FileJob(event_id=checked.event_id, path=checked.path, sha256=checked.sha256,
                                received_at=datetime.now(UTC)))
        self.handled.queued(checked.event_id, checked.path)

    def record_rejections(self) -> None:
        """Write the rows of the rejections kept, and move their files."""
        written = self.rejections.write()
        for eid, path in written.recorded().items():
            self.handled.recorded(eid, path)
        self.mover.move(written.rows)

    # sending ------------------------------------------------------------------------------
    def _flush(self, now: float, force: bool = False) -> None:
        flushed = self.outbox.flush(now, force)
        for m in flushed.sent:
            self.handled.restart_clock(m.event_id)
        if flushed.recorded and self.bound is not None:  # recorded before a restart: this side moves them
            self.mover.finish(flushed.recorded)

    def _settle_inflight(self) -> None:
        """Files sent whose rows appeared are moved now (the crash-safe order of move_outcomes);
        files lost with their bytes are sent again by the rescan."""
        if self.bound is None:
            return
        settled = self.bound.settle()
        for r in settled.recorded:
            self.handled.mark_recorded(r.event_id)
        for eid in settled.lost:
            self.handled.forget(eid)
        if settled.lost:
            self.request_rescan()
        self.mover.move(settled.recorded)

    def send_all(self, timeout: float) -> None:
        """Send everything pending, waiting for room under the in-flight bound (`submit`)."""
        deadline = time.monotonic() + timeout
        self.drain()
        while self._held_by_the_bound() and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            self._settle_inflight()
            self._flush(time.monotonic(), force=True)

    def _held_by_the_bound(self) -> bool:
        """Files pending while others are in flight: room comes as their rows appear."""
        return len(self.outbox) > 0 and self.bound is not None and len(self.bound) > 0
