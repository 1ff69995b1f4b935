"""Process one batch job: skip what is recorded, reuse known duplicates, classify, write rows.

Plain functions with their dependencies passed in, so tests call them without Celery.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from db.models import Result
from db.repository import (
    first_classified_by_sha,
    insert_results,
    lock_hashes,
    recorded_event_ids,
    result_row,
    set_stored_paths,
)
from moodwatch.files import FileRefused, move_outcomes, printable, read_regular_file
from moodwatch.settings import Settings
from worker.inference import Prediction

log = logging.getLogger("moodwatch.worker")
# How many workers try to reach a file before it gets its `failed` row.
UNREACHABLE_ATTEMPTS = 3


class ClassifierLike(Protocol):
    @property
    def version(self) -> Any: ...

    def classify_bytes(self, names: list[str], blobs: list[bytes], max_pixels: int) -> list[Prediction]: ...


@dataclass
class Job:
    event_id: str
    path: str
    received_at: datetime
    attempts: int = 0  # workers that could not reach the file so far
    message: dict[str, Any] | None = None
    sha256: str | None = None  # of the bytes this worker read, never the message's word for it
    data: bytes | None = None  # those bytes, until they are classified

    @classmethod
    def from_message(cls, d: dict[str, Any]) -> Job:
        received = d.get("received_at")
        when = datetime.fromisoformat(received) if received else datetime.now(UTC)
        return cls(str(d["event_id"]), str(d["path"]), when, int(d.get("attempts", 0)), d)


def _row(job: Job, **fields: Any) -> dict[str, Any]:
    return result_row(job.event_id, job.path, job.received_at, sha256=job.sha256, **fields)


def _read(job: Job, settings: Settings, now: datetime) -> dict[str, Any] | None:
    """Read the job's file once, safely; its row when it cannot be classified, else None."""
    try:
        got = read_regular_file(job.path, settings.max_file_bytes)
    except FileRefused as exc:
        return _row(job, status="rejected", error=exc.reason, classified_at=now)
    except FileNotFoundError:
        return _row(job, error=f"file not found or unreadable on this worker: {job.path} "
                    f"(tried by {job.attempts + 1} worker runs)", classified_at=now)
    except OSError as exc:
        return _row(job, error=f"cannot read file: {exc.strerror or exc}", classified_at=now)
    job.sha256, job.data = got.sha256, got.data
    return None


def process_batch(
    messages: list[dict[str, Any]],
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
    jobs = [Job.from_message(m) for m in messages]
    with sessions() as session:
        done = recorded_event_ids(session, (j.event_id for j in jobs))
    jobs = [j for j in jobs if j.event_id not in done]
    if not jobs:
        return {"skipped": len(messages)}

    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    to_classify: list[Job] = []
    retried = 0
    for job in jobs:
        if retry_sink is not None and not os.path.lexists(job.path) \
                and job.attempts + 1 < UNREACHABLE_ATTEMPTS:
            # Maybe this worker lacks the mount: hand the file to any worker, later.
            retry_sink.append({**(job.message or {}), "attempts": job.attempts + 1})
            retried += 1
            continue
        # The bytes held for a batch are bounded: batch size x MOODWATCH_MAX_FILE_BYTES.
        row = _read(job, settings, now)
        if row is not None:
            rows.append(row)
        else:
            to_classify.append(job)

    with sessions() as session:
        known = first_classified_by_sha(session, (j.sha256 for j in to_classify)) if dedupe else {}
        known_fields = {h: (r.id, r.label, r.confidence, r.score, r.model_version)
                        for h, r in known.items()}

    # Same bytes seen before, or twice in this batch: classify once, refer to the first row.
    originals: dict[str, Job] = {}  # keyed by sha256, or by event id when not deduplicating
    duplicates: list[Job] = []
    for job in to_classify:
        if dedupe and (job.sha256 in known_fields or job.sha256 in originals):
            duplicates.append(job)
        else:
            originals[job.sha256 if dedupe else job.event_id] = job

    predictions = classifier.classify_bytes([j.path for j in originals.values()],
                                            [j.data for j in originals.values()], settings.max_pixels)
    for job in to_classify:
        job.data = None  # classified, or a duplicate: the bytes are no longer needed
    version = classifier.version.name
    classified_at = datetime.now(UTC)
    for job, p in zip(originals.values(), predictions, strict=True):
        ms = p.seconds * 1000
        if p.error:
            status = "rejected" if p.rejected else "failed"
            rows.append(_row(job, status=status, error=p.error, classified_at=classified_at,
                             processing_ms=ms))
        else:
            rows.append(_row(job, status="classified", label=p.label, confidence=p.confidence,
                             score=p.score, model_version=version, classified_at=classified_at,
                             processing_ms=ms, faces=p.faces))

    with sessions() as session, session.begin():
        if dedupe and originals:
            # Another worker may have committed the same bytes while we classified: under a
            # lock on those hashes, its row wins and ours becomes a duplicate of it.
            lock_hashes(session, list(originals))
            landed = first_classified_by_sha(session, list(originals))
            for sha, first in landed.items():
                known_fields[sha] = (first.id, first.label, first.confidence, first.score,
                                     first.model_version)
                job = originals.pop(sha)
                duplicates.append(job)
                rows[:] = [r for r in rows if r["event_id"] != job.event_id]
        insert_results(session, rows)
        if duplicates:
            session.flush()
            first_ids = {
                r.sha256: (r.id, r.label, r.confidence, r.score, r.model_version, r.status)
                for r in session.scalars(
                    select(Result).where(Result.event_id.in_([j.event_id for j in originals.values()]))
                )
            }
            dup_rows = []
            for job in duplicates:
                if job.sha256 in known_fields:
                    rid, label, conf, score, model = known_fields[job.sha256]
                    status = "classified"
                else:
                    rid, label, conf, score, model, status = first_ids[job.sha256]
                if status != "classified":  # the first copy failed: this copy fails the same way
                    dup_rows.append(_row(job, status=status, duplicate_of=rid, classified_at=classified_at,
                                         error="same bytes as a file that could not be classified"))
                    continue
                dup_rows.append(_row(job, status="classified", label=label, confidence=conf, score=score,
                                     model_version=model, duplicate_of=rid, classified_at=classified_at,
                                     processing_ms=0.0))
            insert_results(session, dup_rows)
            rows.extend(dup_rows)

    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        outcome = f"{row['label']} ({row['confidence']:.0%})" if row["label"] else f"({row['error']})"
        log.info("%s: %s %s", printable(row["path"]), row["status"], printable(outcome))
    if move_files:
        # After the commit: a file leaves the inbox only once its row exists.
        moved = move_outcomes(rows, settings)
        if moved:
            with sessions() as session, session.begin():
                set_stored_paths(session, moved)
    if retried:
        counts["retried"] = retried
    return counts
