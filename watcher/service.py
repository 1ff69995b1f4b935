"""The watcher loop: events and rescans feed a stability tracker; settled files are validated,
rejected ones recorded at once, accepted ones grouped into batch jobs for the workers.

With MOODWATCH_TRANSPORT=broker the watcher is the inbox's only reader and mover: it puts each
file's bytes in Redis (moodwatch.claims) within a bound on what is in flight, and moves each file
as soon as its row appears."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from db.errors import describe
from db.repository import (
    insert_results,
    outcomes_of,
    recorded_event_ids,
    register_submissions,
    result_row,
    rows_for_arrivals,
    set_stored_paths,
    unmoved_rows,
)
from moodwatch.claims import ClaimStore, open_claims
from moodwatch.files import (
    FileRefused,
    event_id_for,
    inside,
    move_outcomes,
    printable,
    read_regular_file,
)
from moodwatch.filters import is_ignored
from moodwatch.jobs import FileJob, claim_key
from moodwatch.queue import BROKER_ERRORS
from moodwatch.settings import Settings
from moodwatch.vocab import Status
from watcher.stability import StabilityTracker
from watcher.validation import Checked, check_arrival

log = logging.getLogger("moodwatch.watcher")

INOTIFY_HELP = (
    "the system's inotify watch limit is reached, so new folders would be missed. Raise it with "
    "`sudo sysctl fs.inotify.max_user_watches=524288` (and add that line to /etc/sysctl.conf), "
    "or run `moodwatch watch --polling`."
)

Sender = Callable[[list[dict[str, Any]]], None]  # sends one batch job: FileJob.wire() of each file
# How often the watcher of the broker transport asks which files it sent are recorded (and moves
# them): a file leaves the inbox within about this long of its row.
POLL_SECONDS = 1.0


class InotifyLimitError(RuntimeError):
    pass


@dataclass
class Handled:
    """A file this process recorded or sent, and when (monotonic seconds)."""

    path: str
    since: float  # when it was sent (or recorded)
    recorded: bool = False  # known to have its row: never sent again


@dataclass(frozen=True)
class InFlight:
    """A file whose bytes the watcher put in Redis and whose row it has not seen yet."""

    path: str
    size: int
    job: int  # the number of the batch job that carried it


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if event.event_type in ("created", "moved"):
                # A folder moved in whole brings files that raised no events of their own.
                self.watcher.request_rescan()
            return
        path = getattr(event, "dest_path", "") or event.src_path
        if event.event_type in ("created", "modified", "moved", "closed"):
            self.watcher.notice(os.fsdecode(path))


class Watcher:
    def __init__(self, settings: Settings, send: Sender, sessions: sessionmaker | None,
                 polling: bool = False, claims: ClaimStore | None = None):
        self.settings = settings
        if claims is None and settings.transport == "broker":
            claims = open_claims(settings)
        self.claims = claims if settings.transport == "broker" else None
        self.inbox = settings.inbox_dir
        self.send = send
        self.sessions = sessions
        self.polling = polling
        self.tracker = StabilityTracker(settings.settle_seconds)
        self._lock = threading.Lock()
        self._noticed: list[str] = []
        # Event ids recorded or sent by this process: pruned by the rescan once the file has left
        # the inbox (so a long-running watcher does not grow without bound), or once it has been
        # in flight longer than MOODWATCH_RESEND_SECONDS with no row (so it is sent again).
        self._handled: dict[str, Handled] = {}
        self._pending: list[FileJob] = []  # accepted, not yet sent
        self._pending_since = 0.0
        # Rejected, row not yet written; by event id, so a rejection kept for retry while the
        # database is locked is not queued a second time when the rescan finds its file again.
        self._rejects: dict[str, Checked] = {}
        self._send_retry_at = 0.0
        self._send_backoff = 1.0
        self._rescan_at = 0.0
        self._observer = None
        # Broker transport: sent files by event id until their rows (or their keys' loss) are seen.
        self._inflight: dict[str, InFlight] = {}
        self._jobs_sent = 0
        self._poll_at = 0.0
        self._waiting = False  # the in-flight bound holds the pending files back (said once)

    # events -------------------------------------------------------------------------------
    def notice(self, path: str) -> None:
        if is_ignored(path, self.inbox):
            return
        with self._lock:
            self._noticed.append(path)

    def request_rescan(self) -> None:
        self._rescan_at = 0.0

    def start(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        observer = PollingObserver(timeout=1.0) if self.polling else Observer()
        observer.schedule(_Handler(self), str(self.inbox), recursive=True)
        try:
            observer.start()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                raise InotifyLimitError(INOTIFY_HELP) from exc
            raise
        self._observer = observer
        log.info("watching %s (%s)", self.inbox, "polling" if self.polling else "native events")
        self.rescan()  # files dropped while we were down

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

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
        with self._lock:
            noticed, self._noticed = self._noticed, []
        for path in noticed:
            self.tracker.touch(path)
        for path in self.tracker.due():
            self._handle(path)
        self._write_rejects()
        if self._inflight and now >= self._poll_at:
            self._settle_inflight()
        if self._pending and (
            len(self._pending) >= self.settings.batch_size
            or now - self._pending_since >= self.settings.batch_wait
        ):
            self._flush(now)

    def drain(self) -> None:
        """On shutdown: send what is pending (files not yet settled are found again on start)."""
        self._write_rejects()
        self._flush(time.monotonic(), force=True)

    def rescan(self) -> None:
        """Walk the inbox for files without a recorded outcome (missed events, restarts), and
        reconcile with the database: a job can be lost (its retries used up during a long
        database outage, a broker restarted without persistence), and its files would then wait
        in the inbox with no row until a restart."""
        self._rescan_at = time.monotonic() + self.settings.rescan_seconds
        pending = {m.event_id for m in self._pending} | set(self._rejects)
        for eid, handled in list(self._handled.items()):
            if eid not in pending and not os.path.lexists(handled.path):
                del self._handled[eid]
        self._resend_lost(pending)
        if not self.inbox.is_dir():
            return
        found: dict[str, str] = {}  # event id -> path of every file in the inbox
        bare: list[tuple[str, os.stat_result]] = []  # sub-folders with no file, as they were seen
        for root, dirs, files in os.walk(self.inbox, followlinks=False):
            if not files and root != str(self.inbox):
                with contextlib.suppress(OSError):
                    bare.append((root, os.lstat(root)))
            dirs[:] = [d for d in dirs if not is_ignored(os.path.join(root, d), self.inbox)]
            # Links to folders are not followed, but each one gets its own outcome.
            for path in [os.path.join(root, n) for n in files] + \
                    [os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d))]:
                if is_ignored(path, self.inbox):
                    continue
                eid = _event_id(path)
                if eid is not None:
                    found[eid] = path
                if path not in self.tracker and eid not in self._handled:
                    self.tracker.touch(path)
        self._finish_moves(found)
        self._remove_emptied(bare)

    def _remove_emptied(self, bare: list[tuple[str, os.stat_result]]) -> None:
        """Remove the inbox's sub-folders that the moves emptied. Only a folder nobody has
        touched for the settle time (mtime and ctime as seen by the walk: a folder just created,
        or just moved in, may be about to be filled), and only if empty: os.rmdir refuses any
        other, so no file can be lost. Deepest first, so a tree of empty folders goes at once."""
        settled = time.time() - self.settings.settle_seconds
        for folder, st in reversed(bare):  # os.walk lists a folder before its sub-folders
            if max(st.st_mtime, st.st_ctime) > settled or not stat.S_ISDIR(st.st_mode):
                continue
            try:
                os.rmdir(folder)
            except OSError:  # not empty (a file, a hidden one, arrived or stayed): it stays
                continue
            log.info("%s: empty folder removed from the inbox", printable(folder))

    def _resend_lost(self, pending: set[str]) -> None:
        """Forget files sent long ago that still have no row, so the walk sends them again
        (a resend is safe: a job whose event is recorded adds nothing)."""
        cutoff = time.monotonic() - self.settings.resend_seconds
        stale = [eid for eid, h in self._handled.items()
                 if h.since <= cutoff and not h.recorded and eid not in pending]
        if not stale or self.sessions is None:
            return
        try:
            with self.sessions() as session:
                recorded = recorded_event_ids(session, stale)
        except Exception as exc:  # the database is away: nothing can be told; try next time
            _database_unavailable("cannot tell which sent files have rows", exc)
            return
        for eid in recorded:
            self._handled[eid].recorded = True
        lost = [eid for eid in stale if eid not in recorded]
        for eid in lost:
            log.info("%s: no row %.0fs after it was sent; sending it again",
                     printable(self._handled[eid].path), self.settings.resend_seconds)
            del self._handled[eid]

    def _handle(self, path: str) -> None:
        try:
            checked = check_arrival(path, self.inbox, self.settings.max_file_bytes, self.settings.max_pixels)
        except Exception as exc:  # one odd file must never stop the watcher (and every other file)
            log.exception("%s: could not be checked", printable(path))
            checked = _unchecked(path, exc)
        if checked is not None:
            self.take(checked)

    def take(self, checked: Checked, root: Path | None = None) -> None:
        """Queue an accepted file, or keep a rejected one for its row. `root` is the folder the
        file was checked against (the inbox unless said)."""
        if checked.event_id in self._handled or checked.event_id in self._rejects:
            return
        if checked.rejected:
            if checked.sha256 is None:
                checked = replace(checked, sha256=_sha256_of(checked, root or self.inbox,
                                                             self.settings.max_file_bytes))
            self._rejects[checked.event_id] = checked
            return
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(FileJob(event_id=checked.event_id, path=checked.path, sha256=checked.sha256,
                                     received_at=datetime.now(UTC)))
        self._handled[checked.event_id] = Handled(checked.path, time.monotonic())

    def _already_recorded(self, ids: list[str]) -> set[str]:
        if self.sessions is None or not ids:
            return set()
        try:
            with self.sessions() as session:
                return recorded_event_ids(session, ids)
        except Exception as exc:  # the workers' idempotent insert still guards against doubles
            _database_unavailable("cannot check which files are recorded (sending them anyway)", exc)
            return set()

    def _write_rejects(self) -> None:
        if not self._rejects or self.sessions is None:
            return
        rejects, self._rejects = self._rejects, {}
        done = self._already_recorded(list(rejects))
        for eid in done:  # recorded by an earlier try whose answer was lost: not written again
            self._handled[eid] = Handled(rejects.pop(eid).path, time.monotonic(), recorded=True)
        rows = [
            result_row(c.event_id, c.path, datetime.now(UTC), status=Status.REJECTED, error=c.rejected,
                       sha256=c.sha256, classified_at=datetime.now(UTC))
            for c in rejects.values()
        ]
        try:
            with self.sessions() as session, session.begin():
                insert_results(session, rows)
        except Exception as exc:
            log.warning("database unavailable, %d rejection(s) kept for retry: %s", len(rows), describe(exc))
            self._rejects = {**rejects, **self._rejects}
            return
        for row in rows:
            self._handled[row["event_id"]] = Handled(row["path"], time.monotonic(), recorded=True)
            log.info("%s: rejected (%s)", printable(row["path"]), printable(row["error"]))
        self._move(rows)

    def _record_where(self, where: dict[str, str]) -> None:
        with self.sessions() as session, session.begin():
            set_stored_paths(session, where)

    def _move(self, rows: list[dict[str, Any]]) -> None:
        try:
            move_outcomes(rows, self.settings, self._record_where)
        except Exception as exc:  # recorded first, moved after: the next rescan finishes it
            log.warning("%d recorded file(s) not moved yet: %s", len(rows), describe(exc))

    def _finish_moves(self, found: dict[str, str]) -> None:
        """Recorded files still in the inbox whose move a crash or an error cut short (older
        than MOODWATCH_RESEND_SECONDS, so a worker moving one right now is left alone; with the
        broker transport no worker moves files, so any age): move them where their rows say, or
        to their outcome folder."""
        if not found or self.sessions is None:
            return
        before = datetime.now(UTC) - timedelta(
            seconds=0 if self.claims is not None else self.settings.resend_seconds)
        try:
            with self.sessions() as session:
                rows = unmoved_rows(session, list(found), before)
        except Exception as exc:
            _database_unavailable("cannot look for unfinished moves", exc)
            return
        todo = [{**r, "path": found[r["event_id"]]} for r in rows]  # the path as it is on disk
        if todo:
            self._move(todo)

    def _flush(self, now: float, force: bool = False) -> None:
        if not self._pending or (now < self._send_retry_at and not force):
            return
        while self._pending:
            batch = self._within_bound(self._pending[: self.settings.batch_size])
            if not batch:
                return  # the in-flight bound is reached: wait for rows (_settle_inflight)
            done = self._already_recorded([m.event_id for m in batch])
            to_send = [m for m in batch if m.event_id not in done]
            try:
                sent = self._send(to_send) if to_send else []
            except BROKER_ERRORS as exc:
                self._send_retry_at = now + self._send_backoff
                log.warning("broker unreachable (%s: %s): %d file(s) kept, retrying in %.0fs",
                            exc.__class__.__name__, exc, len(self._pending), self._send_backoff)
                self._send_backoff = min(30.0, self._send_backoff * 2)
                return
            except Exception:  # a bug, not an outage: said with its traceback; the files are kept
                self._send_retry_at = now + 30.0
                log.exception("sending %d file(s) failed (not a broker outage); kept, retrying in 30s",
                              len(to_send))
                return
            self._send_backoff = 1.0
            del self._pending[: len(batch)]
            self._note_sent(sent)
            if done and self.claims is not None:  # recorded before a restart: this side moves them
                self._finish_moves({m.event_id: m.path for m in batch if m.event_id in done})
        self._pending_since = now

    def _send(self, jobs: list[FileJob]) -> list[FileJob]:
        """Send one batch job; returns the files it carried."""
        if self.claims is not None:
            jobs = self._stage(jobs)
        if jobs:
            self.send([m.wire() for m in jobs])
        return jobs

    def _note_sent(self, sent: list[FileJob]) -> None:
        for m in sent:
            log.info("%s: queued", printable(m.path))
            if m.event_id in self._handled:  # the resend clock starts when it is sent
                self._handled[m.event_id].since = time.monotonic()
            if self.claims is not None:
                self._inflight[m.event_id] = InFlight(m.path, m.size or 0, self._jobs_sent)
        self._jobs_sent += 1

    # broker transport ---------------------------------------------------------------------
    def in_flight(self) -> tuple[int, int, int]:
        """Files, bytes and batch jobs sent whose rows have not been seen yet."""
        files = self._inflight.values()
        return len(files), sum(f.size for f in files), len({f.job for f in files})

    def _within_bound(self, batch: list[FileJob]) -> list[FileJob]:
        """The first files of batch that fit under MOODWATCH_MAX_INFLIGHT_BYTES and _JOBS (all of
        them in shared mode). With nothing in flight the first file always goes, whatever its
        size: a file larger than the bound must not wait forever."""
        if self.claims is None:
            return batch
        _files, held, jobs = self.in_flight()
        room = self.settings.max_inflight_bytes - held
        out: list[FileJob] = []
        if jobs < self.settings.max_inflight_jobs:
            for m in batch:
                size = _size_now(m.path)
                if size > room and (out or self._inflight):
                    break
                room -= size
                out.append(m)
        if not out and not self._waiting:
            log.info("%d file(s), %d bytes in %d job(s) in flight (MOODWATCH_MAX_INFLIGHT_BYTES, "
                     "_JOBS): waiting for their rows before sending more", *self.in_flight())
        self._waiting = not out
        return out

    def _stage(self, jobs: list[FileJob]) -> list[FileJob]:
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

    def _settle_inflight(self) -> None:
        """Files sent whose rows appeared: no longer in flight, and moved now (the crash-safe
        order of move_outcomes). Files whose keys are gone with no row were lost (their bytes
        expired, Redis restarted empty): no longer in flight, and sent again by the rescan."""
        self._poll_at = time.monotonic() + POLL_SECONDS
        if self.sessions is None or self.claims is None:
            return
        ids = list(self._inflight)
        try:
            # Keys first, rows second: a worker deletes a key only after its rows are committed,
            # so a key seen gone before the rows were read, with no row, has no row coming.
            gone = self.claims.missing([claim_key(e) for e in ids])
            with self.sessions() as session:
                rows = outcomes_of(session, ids)
        except BROKER_ERRORS as exc:
            log.warning("broker unreachable, cannot tell which sent files are done: %s", exc)
            return
        except Exception as exc:  # the database is away: nothing can be told; try next time
            _database_unavailable("cannot tell which sent files are recorded", exc)
            return
        todo = [{**r, "path": self._inflight.pop(r["event_id"]).path} for r in rows]
        for r in todo:
            if r["event_id"] in self._handled:
                self._handled[r["event_id"]].recorded = True
        lost = [e for e in ids if claim_key(e) in gone and e in self._inflight]
        for eid in lost:
            log.warning("%s: its bytes left Redis with no row (expired, or Redis restarted); "
                        "sending it again", printable(self._inflight.pop(eid).path))
            self._handled.pop(eid, None)
        if lost:
            self.request_rescan()
        if todo:
            self._move(todo)

    def send_all(self, timeout: float) -> None:
        """Send everything pending, waiting for room under the in-flight bound (`submit`)."""
        deadline = time.monotonic() + timeout
        self.drain()
        while self._pending and self._inflight and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            self._settle_inflight()
            self._flush(time.monotonic(), force=True)


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


def _event_id(path: str) -> str | None:
    """A file's event id from an lstat alone (a file sent already is not read again)."""
    try:
        return event_id_for(path, os.lstat(path))
    except OSError:
        return None


def _sha256_of(checked: Checked, root: Path, max_bytes: int) -> str | None:
    """The sha256 of a rejected file's bytes, when it can be read: a regular file, inside the
    folder it was checked against (a linked folder leading elsewhere is never read), no larger
    than the limit, and still the arrival that was checked."""
    try:
        got = read_regular_file(checked.path, max_bytes)
    except (FileRefused, OSError):
        return None
    if not Path(got.real_path).is_relative_to(root.resolve()):
        return None
    return got.sha256 if event_id_for(checked.path, got.stat) == checked.event_id else None


def _unchecked(path: str, exc: Exception) -> Checked | None:
    """A rejection for a file the checks failed on unexpectedly; None if it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return Checked(path, event_id_for(path, st), rejected=f"could not be checked: {exc.__class__.__name__}")


def _database_unavailable(what: str, exc: Exception) -> None:
    log.warning("database unavailable, %s: %s", what, describe(exc))  # no statement, no parameters


def celery_sender(settings: Settings) -> Sender:
    from moodwatch.queue import CLASSIFY_TASK, make_celery

    app = make_celery(settings)

    def send(messages: list[dict[str, Any]]) -> None:
        # A short retry policy: on an outage the watcher keeps the files and tries again itself.
        app.send_task(CLASSIFY_TASK, args=[messages], retry=True,
                      retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2})

    return send


@dataclass
class Submitted:
    """What `moodwatch submit` did with one file."""

    path: str
    rejected: str | None = None  # the reason, when the file is refused
    recorded_as: int | None = None  # the row that already records this file: nothing was sent


def _files_under(paths: list[Path]) -> list[str]:
    files: list[str] = []
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            for root, _dirs, names in os.walk(p):
                files += [os.path.join(root, n) for n in sorted(names)
                          if not is_ignored(os.path.join(root, n), p)]
        else:
            files.append(str(p))
    return files


def _recorded_as(sessions: sessionmaker | None, checked: list[Checked]) -> dict[str, int]:
    """Event id -> the row that already records that file: the same arrival, or the same
    bytes at the place a row says they are now (a processed file submitted again)."""
    if sessions is None or not checked:
        return {}
    with sessions() as session:
        rows = rows_for_arrivals(session, [c.event_id for c in checked], [c.sha256 for c in checked])
    by_event = {r.event_id: r.id for r in rows}
    by_place = {(r.sha256, r.stored_path or r.path): r.id for r in rows if r.sha256}
    found = {}
    for c in checked:
        rid = by_event.get(c.event_id) or by_place.get((c.sha256, c.path))
        if rid is not None:
            found[c.event_id] = rid
    return found


def submit_paths(paths: list[Path], settings: Settings, send: Sender,
                 sessions: sessionmaker | None) -> list[Submitted]:
    """Validate files or folders by hand and give them the same outcomes as dropped files;
    a file that already has a row is reported as such, and nothing is sent for it."""
    w = Watcher(settings, send, sessions)
    checked: list[tuple[Checked, bool]] = []
    for f in _files_under(paths):
        in_inbox = inside(f, w.inbox)
        c = check_arrival(f, w.inbox if in_inbox else Path(f).parent, settings.max_file_bytes,
                       settings.max_pixels)
        if c is not None:
            checked.append((c, in_inbox))
    recorded = _recorded_as(sessions, [c for c, _ in checked])
    results = []
    outside: dict[str, str] = {}
    for c, in_inbox in checked:
        results.append(Submitted(c.path, c.rejected, recorded.get(c.event_id)))
        if c.event_id in recorded:
            continue
        if not in_inbox and not c.rejected:
            outside[c.event_id] = c.path
        w.take(c, w.inbox if in_inbox else Path(c.path).parent)
    if outside and sessions is not None:
        # Workers read a file outside the inbox only if it was registered here first.
        try:
            with sessions() as session, session.begin():
                register_submissions(session, outside)
        except Exception as exc:
            raise RuntimeError(f"could not register {len(outside)} file(s) from outside the inbox: "
                               f"is the database up? ({exc.__class__.__name__})") from exc
    w.send_all(timeout=settings.claim_ttl_seconds)
    if w._pending or w._rejects:
        raise RuntimeError(f"{len(w._pending)} file(s) could not be queued and "
                           f"{len(w._rejects)} rejection(s) not recorded: is the broker/database up?")
    return results


