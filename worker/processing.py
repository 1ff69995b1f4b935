"""Process one batch job: check every item, skip what is recorded, reuse known duplicates,
classify, write rows.

Nothing in a message is trusted: anyone who can write to the broker can write one. Each item is
validated on its own (a malformed one gets its own `failed` row and the others go on), the
watcher's checks are applied again (ignore patterns, extension, inside the inbox or registered by
`submit`), the file is read once, safely, and hashed here; the message's hash is never used.

Plain functions with their dependencies passed in, so tests call them without Celery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator
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
from moodwatch.files import FileRefused, inside, move_outcomes, printable, read_regular_file
from moodwatch.filters import is_ignored
from moodwatch.images import extension_allowed
from moodwatch.settings import Settings
from worker.inference import Prediction

log = logging.getLogger("moodwatch.worker")
# How many workers try to reach a file before it gets its `failed` row.
UNREACHABLE_ATTEMPTS = 3


class ClassifierLike(Protocol):
    @property
    def version(self) -> Any: ...

    def classify_bytes(self, names: list[str], blobs: list[bytes], max_pixels: int,
                       time_limit: float | None = None) -> list[Prediction]: ...


class JobItem(BaseModel):
    """One item of a classify job, as the watcher sends it; extra fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    event_id: StrictStr = Field(pattern=r"^[0-9a-f]{40}$")
    # The path is checked by path_problem: it may carry the surrogate escapes of a name that is
    # not UTF-8, which pydantic's core cannot take.
    received_at: datetime | None = None
    attempts: int = 0

    @field_validator("attempts")
    @classmethod
    def _clamp(cls, value: int) -> int:
        # A forged count must not buy hundreds of redeliveries nor skip them all.
        return min(max(value, 0), UNREACHABLE_ATTEMPTS - 1)


@dataclass
class Job:
    event_id: str
    path: str
    received_at: datetime
    attempts: int = 0  # workers that could not reach the file so far
    message: dict[str, Any] | None = None
    sha256: str | None = None  # of the bytes this worker read, never the message's word for it
    data: bytes | None = None  # those bytes, until they are classified


@dataclass
class Triage:
    rows: list[dict[str, Any]] = field(default_factory=list)  # outcomes known without the model
    jobs: list[Job] = field(default_factory=list)  # files read, to classify
    retried: int = 0


def path_problem(path: Any) -> str | None:
    if not isinstance(path, str):
        return "path: not a string"
    if not 0 < len(path) <= 4096:
        return "path: empty or longer than 4096 characters"
    return "path: NUL byte in path" if "\x00" in path else None


def parse_item(item: Any, now: datetime) -> Job | dict[str, Any]:
    """A job, or the `failed` row of an item that is malformed.

    A malformed item's row never takes the event id it claims (a forged item must not block a
    real file's event): its id is derived from the item itself, so a redelivery finds it."""
    reasons = []
    try:
        ok = JobItem.model_validate(item)
    except ValidationError as exc:
        reasons = [f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors()]
    path = item.get("path") if isinstance(item, dict) else None
    if isinstance(item, dict) and (problem := path_problem(path)):
        reasons.append(problem)
    if reasons:
        digest = hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()
        return result_row(f"malformed-{digest[:30]}", path if isinstance(path, str) else "(no path)", now,
                          status="failed", error=f"malformed job item: {'; '.join(reasons)}"[:500],
                          classified_at=now)
    when = ok.received_at or now
    return Job(ok.event_id, path, when if when.tzinfo else when.replace(tzinfo=UTC), ok.attempts,
               {**item, "attempts": ok.attempts})


def _row(job: Job, **fields: Any) -> dict[str, Any]:
    return result_row(job.event_id, job.path, job.received_at, sha256=job.sha256, **fields)


def refusal(job: Job, settings: Settings, submitted: dict[str, str]) -> str | None:
    """Why the watcher would never have sent this path, or None: its checks, applied again."""
    in_inbox = inside(job.path, settings.inbox_dir)
    if not in_inbox and submitted.get(job.event_id) != printable(job.path):
        return "refused: the path is neither in the inbox nor a file `moodwatch submit` registered"
    if is_ignored(job.path, settings.inbox_dir.resolve() if in_inbox else None):
        return "refused: a hidden or temporary file (the watcher waits until it is renamed)"
    if not extension_allowed(job.path):
        return "refused: the file type is not accepted"
    return None


def _read(job: Job, settings: Settings, submitted: dict[str, str], now: datetime) -> dict[str, Any] | None:
    """Read the job's file once, safely; its row when it cannot be classified, else None."""
    try:
        got = read_regular_file(job.path, settings.max_file_bytes)
    except FileRefused as exc:
        return _row(job, status="rejected", error=exc.reason, classified_at=now)
    except FileNotFoundError:
        return _row(job, status="failed", error=f"file not found or unreadable on this worker: {job.path} "
                    f"(tried by {job.attempts + 1} worker runs)", classified_at=now)
    except OSError as exc:
        return _row(job, status="failed", error=f"cannot read file: {exc.strerror or exc}", classified_at=now)
    if job.event_id not in submitted and not inside(got.real_path, settings.inbox_dir):
        # A folder on the way was swapped for a link after the check above.
        return _row(job, status="failed", error="refused: the file opened lies outside the inbox",
                    classified_at=now)
    job.sha256, job.data = got.sha256, got.data
    return None


def triage(jobs: list[Job], settings: Settings, sessions: sessionmaker, now: datetime,
           retry_sink: list[dict[str, Any]] | None) -> Triage:
    """Refuse what the watcher would not send, hand unreachable files on, read the rest."""
    with sessions() as session:
        submitted = submitted_paths(session, [j.event_id for j in jobs
                                              if not inside(j.path, settings.inbox_dir)])
    out = Triage()
    for job in jobs:
        reason = refusal(job, settings, submitted)
        if reason is not None:
            log.warning("%s: %s", printable(job.path), reason)
            out.rows.append(_row(job, status="failed", error=reason, classified_at=now))
            continue
        if retry_sink is not None and not os.path.lexists(job.path) \
                and job.attempts + 1 < UNREACHABLE_ATTEMPTS:
            # Maybe this worker lacks the mount: hand the file to any worker, later.
            retry_sink.append({**(job.message or {}), "attempts": job.attempts + 1})
            out.retried += 1
            continue
        # The bytes held for a batch are bounded: batch size x MOODWATCH_MAX_FILE_BYTES.
        row = _read(job, settings, submitted, now)
        if row is not None:
            out.rows.append(row)
        else:
            out.jobs.append(job)
    return out


def skip_recorded(parsed: list[Job | dict[str, Any]],
                  sessions: sessionmaker) -> tuple[list[Job], list[dict[str, Any]]]:
    """The jobs and the malformed items' rows whose events have no row yet (a redelivered job
    adds nothing)."""
    jobs = [p for p in parsed if isinstance(p, Job)]
    bad = [p for p in parsed if not isinstance(p, Job)]
    with sessions() as session:
        done = recorded_event_ids(session, [j.event_id for j in jobs] + [r["event_id"] for r in bad])
    return [j for j in jobs if j.event_id not in done], [r for r in bad if r["event_id"] not in done]


def process_batch(
    messages: list[Any],
    settings: Settings,
    sessions: sessionmaker,
    classifier: ClassifierLike,
    move_files: bool = True,
    dedupe: bool = True,
    retry_sink: list[dict[str, Any]] | None = None,
) -> dict[str, int]:
    """Classify a batch and record one row per event; returns counts by status.

    Safe to run twice on the same messages: recorded events are skipped and inserts ignore
    event ids that are already there, so a redelivered job adds no second row.
    """
    if len(messages) > settings.batch_size:
        # The watcher never sends more; a larger job is forged or misconfigured, and its files,
        # if real, are still in the inbox, where the watcher's rescan sends them again.
        log.error("refused a job of %d items: more than MOODWATCH_BATCH_SIZE=%d (give the watcher "
                  "and the workers the same batch size)", len(messages), settings.batch_size)
        return {"refused": len(messages)}
    now = datetime.now(UTC)
    jobs, bad = skip_recorded([parse_item(m, now) for m in messages], sessions)
    if not jobs and not bad:
        return {"skipped": len(messages)}

    checked = triage(jobs, settings, sessions, now, retry_sink)
    batch = classify(checked.jobs, settings, sessions, classifier, dedupe)
    requeued = hand_back_unstarted(batch, retry_sink, settings, now)
    batch.rows = bad + checked.rows + batch.rows
    added = record(batch, sessions, dedupe)
    rows = batch.rows

    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        outcome = f"{row['label']} ({row['confidence']:.0%})" if row["label"] else f"({row['error']})"
        log.info("%s: %s %s", printable(row["path"]), row["status"], printable(outcome))
    if move_files:
        # After the commit: a file leaves the inbox only once its row exists, and only the
        # rows this run added move files (a redelivered twin running at once moves nothing).
        _move([r for r in rows if r["event_id"] in added], settings, sessions)
    if checked.retried:
        counts["retried"] = checked.retried
    if requeued:
        counts["requeued"] = requeued
    return counts


def hand_back_unstarted(batch: Classified, retry_sink: list[dict[str, Any]] | None, settings: Settings,
                        now: datetime) -> int:
    """The files whose decode had not begun when the batch's time limit came (every decode thread
    was held by slow ones) go back to the queue as they came, for a later job; returns how many.
    With nowhere to send them (no retry_sink), each gets a `failed` row instead."""
    if retry_sink is not None:
        retry_sink.extend(dict(job.message or {}) for job in batch.unstarted)
        return len(batch.unstarted)
    batch.rows.extend(_row(job, status="failed", classified_at=now,
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
    status: str = "classified"

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
            status = "rejected" if p.rejected else "failed"
            rows.append(_row(job, status=status, error=p.error, classified_at=classified_at,
                             processing_ms=ms))
        else:
            rows.append(_row(job, status="classified", label=p.label, confidence=p.confidence,
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
    if first.status != "classified":  # the first copy failed: this copy fails the same way
        return _row(job, status=first.status, duplicate_of=first.id, classified_at=classified_at,
                    error="same bytes as a file that could not be classified")
    return _row(job, status="classified", label=first.label, confidence=first.confidence,
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
