"""Writing a batch's rows: one transaction, under a lock on the hashes of the bytes classified,
so that two workers that classified the same bytes at once record one original and one copy."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Result
from db.repository import first_classified_by_sha, insert_new_results, lock_hashes
from moodwatch.outcome import Outcome
from moodwatch.vocab import Status
from worker.classification import Classified, Verdict
from worker.items import Job, row_of


@dataclass(frozen=True)
class Recorded:
    rows: list[Outcome]  # every row of the batch, copies included (some may have been there already)
    added: set[str]  # the event ids whose rows this run added


def yield_to_rows_that_landed(session: Session, batch: Classified) -> Classified:
    """Another worker may have committed the same bytes while we classified: under a lock on
    those hashes, its row wins and ours becomes a duplicate of it. Returns the batch so changed."""
    lock_hashes(session, list(batch.originals))
    landed = {sha: Verdict.of(first) for sha, first in
              first_classified_by_sha(session, list(batch.originals)).items()}
    if not landed:
        return batch
    lost = {batch.originals[sha].event_id for sha in landed}
    return replace(batch, rows=[r for r in batch.rows if r.event_id not in lost],
                   originals={sha: j for sha, j in batch.originals.items() if sha not in landed},
                   duplicates=batch.duplicates + [batch.originals[sha] for sha in landed],
                   known={**batch.known, **landed})


def duplicate_row(job: Job, first: Verdict, classified_at: datetime) -> Outcome:
    if first.status != Status.CLASSIFIED:  # the first copy failed: this copy fails the same way
        return row_of(job, status=first.status, duplicate_of=first.id, classified_at=classified_at,
                      error="same bytes as a file that could not be classified")
    return row_of(job, status=Status.CLASSIFIED, label=first.label, confidence=first.confidence,
                  score=first.score, model_version=first.model_version, duplicate_of=first.id,
                  classified_at=classified_at, processing_ms=0.0)


def record(batch: Classified, sessions: sessionmaker, dedupe: bool) -> Recorded:
    """Write the batch's rows, and the rows of its copies (which refer to their first row), in one
    transaction, under the lock on their hashes."""
    classified_at = datetime.now(UTC)
    with sessions() as session, session.begin():
        if dedupe and batch.originals:
            batch = yield_to_rows_that_landed(session, batch)
        added = insert_new_results(session, batch.rows)
        if not batch.duplicates:
            return Recorded(batch.rows, added)
        session.flush()
        new_ids = [j.event_id for j in batch.originals.values()]
        # Bytes first seen in this batch refer to the rows just inserted (classified or not).
        firsts = {r.sha256: Verdict.of(r)
                  for r in session.scalars(select(Result).where(Result.event_id.in_(new_ids)))}
        copies = [duplicate_row(job, batch.known.get(job.sha256) or firsts[job.sha256], classified_at)
                  for job in batch.duplicates]
        added |= insert_new_results(session, copies)
    return Recorded(batch.rows + copies, added)
