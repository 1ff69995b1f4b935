"""Process one batch job: check every item, skip what is recorded, reuse known duplicates,
classify, write rows.

Nothing in a message is trusted: anyone who can write to the broker can write one. Each item is
validated on its own (a malformed one gets its own `failed` row and the others go on) and the
watcher's checks on its name are applied again. Shared transport: the path must be inside the
inbox or registered by `submit`, the file is read once, safely, and hashed here; the message's
hash is never used. Broker transport: no path is ever opened; the bytes come from the job's claim
in Redis and must have the size and sha256 the message says (moodwatch.claims).

Plain functions with their dependencies passed in, so tests call them without Celery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.errors import describe
from db.models import Result
from db.repository import (
    first_classified_by_sha,
    insert_new_results,
    lock_hashes,
    recorded_event_ids,
    result_row,
    set_stored_paths,
    submitted_paths,
)
from moodwatch.admission import FileRefused, read_regular_file, too_large
from moodwatch.claims import ClaimStore
from moodwatch.files import inside, printable
from moodwatch.filters import is_ignored
from moodwatch.images import extension_allowed
from moodwatch.jobs import UNREACHABLE_ATTEMPTS, FileJob, claim_key
from moodwatch.outcome_moves import move_outcomes
from moodwatch.queue import BROKER_ERRORS
from moodwatch.settings import Settings
from moodwatch.vocab import Status
from worker.inference import Prediction

__all__ = ["UNREACHABLE_ATTEMPTS", "ClassifierLike", "Job", "process_batch"]

log = logging.getLogger("moodwatch.worker")


class ClassifierLike(Protocol):
    @property
    def version(self) -> Any: ...

    def classify_bytes(self, names: list[str], blobs: list[bytes], max_pixels: int,
                       time_limit: float | None = None) -> list[Prediction]: ...


@dataclass
class Job:
    """One file of the batch: the message as validated, and the bytes this worker got."""

    item: FileJob
    received_at: datetime  # aware: the message's time, or when this worker took the job
    sha256: str | None = None  # of the bytes this worker got, never the message's word for it
    data: bytes | None = None  # those bytes, until they are classified

    @property
    def event_id(self) -> str:
        return self.item.event_id

    @property
    def path(self) -> str:
        return self.item.path

    @property
    def attempts(self) -> int:
        return self.item.attempts


class _Lost:
    """A claim whose bytes are gone (expired, a Redis restarted empty): no row; the watcher, which
    still holds the file, sees the key gone with no row and sends the file again."""


LOST = _Lost()


@dataclass
class Triage:
    rows: list[dict[str, Any]] = field(default_factory=list)  # outcomes known without the model
    jobs: list[Job] = field(default_factory=list)  # files read, to classify
    retried: int = 0
    lost: int = 0


def _refused_row(item: Any, kind: str, error: str, now: datetime) -> dict[str, Any]:
    """The `failed` row of an item that is not what it claims. It never takes the event id the
    item claims (a forged item must not block a real file's event): its id is derived from the
    item itself, so a redelivery finds it."""
    digest = hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()
    path = item.get("path") if isinstance(item, dict) else None
    return result_row(f"{kind}-{digest[:30]}", path if isinstance(path, str) else "(no path)", now,
                      status=Status.FAILED, error=error[:500], classified_at=now)


def parse_item(item: Any, now: datetime) -> Job | dict[str, Any]:
    """A job, or the `failed` row of an item that is malformed."""
    try:
        ok = FileJob.model_validate(item)
    except ValidationError as exc:
        reasons = [f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors()]
        return _refused_row(item, "malformed", f"malformed job item: {'; '.join(reasons)}", now)
    return Job(ok, ok.arrived if ok.received_at else now)


def _row(job: Job, **fields: Any) -> dict[str, Any]:
    return result_row(job.event_id, job.path, job.received_at, sha256=job.sha256, **fields)


def _name_refusal(path: str, root: Any = None) -> str | None:
    if is_ignored(path, root):
        return "refused: a hidden or temporary file (the watcher waits until it is renamed)"
    if not extension_allowed(path):
        return "refused: the file type is not accepted"
    return None


def refusal(job: Job, settings: Settings, submitted: dict[str, str]) -> str | None:
    """Why the watcher would never have sent this path, or None: its checks, applied again."""
    in_inbox = inside(job.path, settings.inbox_dir)
    if not in_inbox and submitted.get(job.event_id) != printable(job.path):
        return "refused: the path is neither in the inbox nor a file `moodwatch submit` registered"
    return _name_refusal(job.path, settings.inbox_dir.resolve() if in_inbox else None)


def _read(job: Job, settings: Settings, submitted: dict[str, str], now: datetime) -> Job | dict[str, Any]:
    """The job with its file's bytes, read once, safely; or its row when it cannot be classified."""
    try:
        got = read_regular_file(job.path, settings.max_file_bytes)
    except FileRefused as exc:
        return _row(job, status=Status.REJECTED, error=exc.reason, classified_at=now)
    except FileNotFoundError:
        return _row(job, status=Status.FAILED, classified_at=now,
                    error=f"file not found or unreadable on this worker: {job.path} "
                    f"(tried by {job.attempts + 1} worker runs)")
    except OSError as exc:
        return _row(job, status=Status.FAILED, classified_at=now,
                    error=f"cannot read file: {exc.strerror or exc}")
    if job.event_id not in submitted and not inside(got.real_path, settings.inbox_dir):
        # A folder on the way was swapped for a link after the check above.
        return _row(job, status=Status.FAILED, error="refused: the file opened lies outside the inbox",
                    classified_at=now)
    return replace(job, sha256=got.sha256, data=got.data)


def _receive(job: Job, claims: ClaimStore, settings: Settings, now: datetime) -> Job | dict[str, Any] | _Lost:
    """The job with the bytes its claim holds, checked against the message's size and sha256;
    its row when they cannot be classified; LOST when they are gone. The size is asked first, so
    no claim larger than MOODWATCH_MAX_FILE_BYTES is ever fetched."""
    item = job.item
    if item.claim is None:
        return _row(job, status=Status.FAILED, classified_at=now, error="refused: a job without its bytes "
                    "(this worker has MOODWATCH_TRANSPORT=broker: give the watcher the same)")
    size = claims.size(item.claim)
    if size == 0:
        return LOST
    if size > settings.max_file_bytes:
        return _row(job, status=Status.REJECTED, classified_at=now,
                    error=too_large(size, settings.max_file_bytes))
    data = claims.get(item.claim) if size == item.size else b""
    if data is None:
        return LOST
    sha = hashlib.sha256(data).hexdigest()
    if len(data) != item.size or sha != item.sha256:
        log.warning("%s: the bytes received do not match the job (forged or damaged); refused",
                    printable(job.path))
        return _refused_row(item.wire(), "mismatch", "refused: the bytes received do not have the job's "
                            f"size and sha256 ({len(data) or size:,} bytes, not {item.size:,})", now)
    return replace(job, sha256=sha, data=data)


def _triage_claims(jobs: list[Job], claims: ClaimStore, settings: Settings, now: datetime) -> Triage:
    """Broker transport: refuse what the watcher would not send, take the rest's bytes from
    their claims. No path is opened: the inbox is on the watcher's machine."""
    out = Triage()
    for job in jobs:
        reason = _name_refusal(job.path)
        got = _row(job, status=Status.FAILED, error=reason, classified_at=now) if reason \
            else _receive(job, claims, settings, now)
        if reason:
            log.warning("%s: %s", printable(job.path), reason)
        if got is LOST:
            log.warning("%s: its bytes are no longer in Redis (expired, or Redis restarted); the "
                        "watcher sends it again", printable(job.path))
            out.lost += 1
        elif isinstance(got, Job):
            out.jobs.append(got)
        else:
            out.rows.append(got)
    return out


def triage(jobs: list[Job], settings: Settings, sessions: sessionmaker, now: datetime,
           retry_sink: list[dict[str, Any]] | None, claims: ClaimStore | None = None) -> Triage:
    """Refuse what the watcher would not send, hand unreachable files on, read the rest."""
    if claims is not None:
        return _triage_claims(jobs, claims, settings, now)
    with sessions() as session:
        submitted = submitted_paths(session, [j.event_id for j in jobs
                                              if not inside(j.path, settings.inbox_dir)])
    out = Triage()
    for job in jobs:
        reason = refusal(job, settings, submitted)
        if reason is not None:
            log.warning("%s: %s", printable(job.path), reason)
            out.rows.append(_row(job, status=Status.FAILED, error=reason, classified_at=now))
            continue
        if retry_sink is not None and not os.path.lexists(job.path) \
                and job.attempts + 1 < UNREACHABLE_ATTEMPTS:
            # Maybe this worker lacks the mount: hand the file to any worker, later.
            retry_sink.append(job.item.handed_back().wire())
            out.retried += 1
            continue
        # The bytes held for a batch are bounded: batch size x MOODWATCH_MAX_FILE_BYTES.
        got = _read(job, settings, submitted, now)
        if isinstance(got, Job):
            out.jobs.append(got)
        else:
            out.rows.append(got)
    return out


def skip_recorded(parsed: list[Job | dict[str, Any]],
                  sessions: sessionmaker) -> tuple[list[Job], list[dict[str, Any]], set[str]]:
    """The jobs and the malformed items' rows whose events have no row yet (a redelivered job
    adds nothing), and the jobs' event ids that are recorded already."""
    jobs = [p for p in parsed if isinstance(p, Job)]
    bad = [p for p in parsed if not isinstance(p, Job)]
    with sessions() as session:
        done = recorded_event_ids(session, [j.event_id for j in jobs] + [r["event_id"] for r in bad])
    return ([j for j in jobs if j.event_id not in done], [r for r in bad if r["event_id"] not in done],
            {j.event_id for j in jobs if j.event_id in done})


def release_claims(claims: ClaimStore | None, event_ids: set[str]) -> None:
    """Delete the bytes of files whose rows are committed. Failing that (Redis away), they expire."""
    if claims is None or not event_ids:
        return
    try:
        claims.delete(claim_key(e) for e in sorted(event_ids))
    except BROKER_ERRORS as exc:
        log.warning("could not delete the bytes of %d recorded file(s) from Redis (%s); they expire",
                    len(event_ids), exc)


def process_batch(
    messages: list[Any],
    settings: Settings,
    sessions: sessionmaker,
    classifier: ClassifierLike,
    move_files: bool = True,
    dedupe: bool = True,
    retry_sink: list[dict[str, Any]] | None = None,
    claims: ClaimStore | None = None,
) -> dict[str, int]:
    """Classify a batch and record one row per event; returns counts by status.

    Safe to run twice on the same messages: recorded events are skipped and inserts ignore
    event ids that are already there, so a redelivered job adds no second row. With `claims`
    (broker transport) the bytes come from Redis, are deleted once their rows are committed, and
    no file is moved here: the watcher, which holds the inbox, moves it when it sees the row.
    """
    if len(messages) > settings.batch_size:
        # The watcher never sends more; a larger job is forged or misconfigured, and its files,
        # if real, are still in the inbox, where the watcher's rescan sends them again.
        log.error("refused a job of %d items: more than MOODWATCH_BATCH_SIZE=%d (give the watcher "
                  "and the workers the same batch size)", len(messages), settings.batch_size)
        return {"refused": len(messages)}
    now = datetime.now(UTC)
    jobs, bad, recorded = skip_recorded([parse_item(m, now) for m in messages], sessions)
    if not jobs and not bad:
        release_claims(claims, recorded)  # a redelivery, or a resend of a file recorded meanwhile
        return {"skipped": len(messages)}

    checked = triage(jobs, settings, sessions, now, retry_sink, claims)
    batch = classify(checked.jobs, settings, sessions, classifier, dedupe)
    requeued = hand_back_unstarted(batch, retry_sink, settings, now)
    batch.rows = bad + checked.rows + batch.rows
    added = record(batch, sessions, dedupe)
    rows = batch.rows
    # After the commit; rows with ids of their own (malformed, mismatched) release no claim.
    release_claims(claims, recorded | ({r["event_id"] for r in rows} & {j.event_id for j in jobs}))

    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        outcome = f"{row['label']} ({row['confidence']:.0%})" if row["label"] else f"({row['error']})"
        log.info("%s: %s %s", printable(row["path"]), row["status"], printable(outcome))
    if move_files and claims is None:
        # After the commit: a file leaves the inbox only once its row exists, and only the
        # rows this run added move files (a redelivered twin running at once moves nothing).
        _move([r for r in rows if r["event_id"] in added], settings, sessions)
    for name, n in (("retried", checked.retried), ("requeued", requeued), ("lost", checked.lost)):
        if n:
            counts[name] = n
    return counts


def hand_back_unstarted(batch: Classified, retry_sink: list[dict[str, Any]] | None, settings: Settings,
                        now: datetime) -> int:
    """The files whose decode had not begun when the batch's time limit came (every decode thread
    was held by slow ones) go back to the queue as they came, for a later job; returns how many.
    Their claims stay: the later job takes the same bytes. With nowhere to send them (no
    retry_sink), each gets a `failed` row instead."""
    if retry_sink is not None:
        retry_sink.extend(job.item.wire() for job in batch.unstarted)
        return len(batch.unstarted)
    batch.rows.extend(_row(job, status=Status.FAILED, classified_at=now,
                           error=f"not decoded: the batch's time limit ({settings.batch_time_limit:g} s) "
                                 "came before its turn")
                      for job in batch.unstarted)
    return 0


def _move(rows: list[dict[str, Any]], settings: Settings, sessions: sessionmaker) -> None:
    def record(where: dict[str, str]) -> None:
        with sessions() as session, session.begin():
            set_stored_paths(session, where)

    try:
        move_outcomes(rows, settings, record)
    except Exception as exc:  # the rows are written: the watcher's rescan moves the files later
        log.warning("%d row(s) recorded but their files not moved yet (%s); the watcher's "
                    "rescan will move them", len(rows), describe(exc))


@dataclass(frozen=True)
class Verdict:
    """The first row recorded for some bytes: what a later copy of the same bytes refers to."""

    id: int
    label: str | None
    confidence: float | None
    score: float | None
    model_version: str | None
    status: str = Status.CLASSIFIED

    @classmethod
    def of(cls, row: Result) -> Verdict:
        return cls(row.id, row.label, row.confidence, row.score, row.model_version, row.status)


@dataclass
class Classified:
    """One batch after classification: the rows of the bytes classified now, the job of each
    (by sha256, or by event id without deduplication), the copies of bytes classified before or
    earlier in the batch, and the first verdict known for each hash."""

    rows: list[dict[str, Any]]
    originals: dict[str, Job]
    duplicates: list[Job]
    known: dict[str, Verdict]
    unstarted: list[Job] = field(default_factory=list)  # not decoded before the time limit: no row yet


def split_duplicates(jobs: list[Job], known: dict[str, Verdict],
                     dedupe: bool) -> tuple[dict[str, Job], list[Job]]:
    """Same bytes seen before, or twice in this batch: the first is classified, the rest refer
    to it. Returns the originals (by sha256, or by event id when not deduplicating) and copies."""
    originals: dict[str, Job] = {}
    duplicates: list[Job] = []
    for job in jobs:
        if dedupe and (job.sha256 in known or job.sha256 in originals):
            duplicates.append(job)
        else:
            originals[job.sha256 if dedupe else job.event_id] = job
    return originals, duplicates


def classify(jobs: list[Job], settings: Settings, sessions: sessionmaker, classifier: ClassifierLike,
             dedupe: bool) -> Classified:
    """Classify each new bytes once; the rows of the originals, and what the copies refer to."""
    with sessions() as session:
        found = first_classified_by_sha(session, (j.sha256 for j in jobs)) if dedupe else {}
        known = {h: Verdict.of(r) for h, r in found.items()}
    originals, duplicates = split_duplicates(jobs, known, dedupe)
    predictions = classifier.classify_bytes([j.path for j in originals.values()],
                                            [j.data for j in originals.values()], settings.max_pixels,
                                            time_limit=settings.batch_time_limit)
    for job in jobs:
        job.data = None  # classified, or a duplicate: the bytes are no longer needed
    version = classifier.version.name
    classified_at = datetime.now(UTC)
    rows = []
    unstarted = set()
    for (key, job), p in zip(originals.items(), predictions, strict=True):
        ms = p.batch_seconds_per_file * 1000  # a batch average, see Prediction
        if p.unstarted:
            unstarted.add(key)
        elif p.error:
            status = Status.REJECTED if p.rejected else Status.FAILED
            rows.append(_row(job, status=status, error=p.error, classified_at=classified_at,
                             processing_ms=ms))
        else:
            rows.append(_row(job, status=Status.CLASSIFIED, label=p.label, confidence=p.confidence,
                             score=p.score, model_version=version, classified_at=classified_at,
                             processing_ms=ms, faces=p.faces))
    return _without_unstarted(Classified(rows, originals, duplicates, known), unstarted)


def _without_unstarted(batch: Classified, keys: set[str]) -> Classified:
    """Take out the originals never decoded (by their keys in batch.originals) and the copies of
    their bytes in this batch, which would refer to a row that is not written."""
    if keys:
        batch.unstarted = [batch.originals.pop(k) for k in list(batch.originals) if k in keys]
        shas = {j.sha256 for j in batch.unstarted}
        copies = [j for j in batch.duplicates if j.sha256 in shas and j.sha256 not in batch.known]
        batch.duplicates = [j for j in batch.duplicates if all(j is not c for c in copies)]
        batch.unstarted += copies
    return batch


def _yield_to_rows_that_landed(session: Session, batch: Classified) -> None:
    """Another worker may have committed the same bytes while we classified: under a lock on
    those hashes, its row wins and ours becomes a duplicate of it."""
    lock_hashes(session, list(batch.originals))
    landed = first_classified_by_sha(session, list(batch.originals))
    lost = set()
    for sha, first in landed.items():
        batch.known[sha] = Verdict.of(first)
        job = batch.originals.pop(sha)
        batch.duplicates.append(job)
        lost.add(job.event_id)
    batch.rows = [r for r in batch.rows if r["event_id"] not in lost]


def _duplicate_row(job: Job, first: Verdict, classified_at: datetime) -> dict[str, Any]:
    if first.status != Status.CLASSIFIED:  # the first copy failed: this copy fails the same way
        return _row(job, status=first.status, duplicate_of=first.id, classified_at=classified_at,
                    error="same bytes as a file that could not be classified")
    return _row(job, status=Status.CLASSIFIED, label=first.label, confidence=first.confidence,
                score=first.score, model_version=first.model_version, duplicate_of=first.id,
                classified_at=classified_at, processing_ms=0.0)


def record(batch: Classified, sessions: sessionmaker, dedupe: bool) -> set[str]:
    """Write the rows (duplicates refer to their first row) in one transaction, under the lock on
    their hashes; returns the event ids added. batch.rows ends up holding every row written."""
    classified_at = datetime.now(UTC)
    with sessions() as session, session.begin():
        if dedupe and batch.originals:
            _yield_to_rows_that_landed(session, batch)
        added = insert_new_results(session, batch.rows)
        if not batch.duplicates:
            return added
        session.flush()
        new_ids = [j.event_id for j in batch.originals.values()]
        # Bytes first seen in this batch refer to the rows just inserted (classified or not).
        firsts = {r.sha256: Verdict.of(r)
                  for r in session.scalars(select(Result).where(Result.event_id.in_(new_ids)))}
        dup_rows = [_duplicate_row(job, batch.known.get(job.sha256) or firsts[job.sha256], classified_at)
                    for job in batch.duplicates]
        added |= insert_new_results(session, dup_rows)
        batch.rows.extend(dup_rows)
    return added
