"""Classification and de-duplication: each new bytes is classified once; a copy of bytes seen
before, or earlier in the batch, refers to the first row recorded for them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.orm import sessionmaker

from db.models import Result
from db.repository import first_classified_by_sha
from moodwatch.outcome import Outcome
from moodwatch.settings import Settings
from moodwatch.vocab import Status
from worker.items import Job, row_of

if TYPE_CHECKING:  # the type only: the database and de-duplication logic runs without the model's stack
    from moodwatch.images import ImageInfo
    from worker.inference import Prediction


class ClassifierLike(Protocol):
    """What process_batch needs of a classifier (worker.inference.Classifier, or a test's)."""

    @property
    def version(self) -> Any: ...

    def classify_bytes(self, names: list[str], blobs: list[bytes], max_pixels: int,
                       time_limit: float | None = None,
                       images: list[ImageInfo | None] | None = None) -> list[Prediction]: ...


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


@dataclass(frozen=True)
class Classified:
    """One batch after classification: the rows to write (of the bytes classified now, and any
    the caller adds), the job of each original (by sha256, or by event id without deduplication),
    the copies of bytes classified before or earlier in the batch, and the first verdict known for
    each hash."""

    rows: list[Outcome]
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


def _prediction_row(job: Job, p: Prediction, version: str, classified_at: datetime) -> Outcome:
    ms = p.batch_seconds_per_file * 1000  # a batch average, see Prediction
    if p.error:
        status = Status.REJECTED if p.rejected else Status.FAILED
        return row_of(job, status=status, error=p.error, classified_at=classified_at, processing_ms=ms)
    return row_of(job, status=Status.CLASSIFIED, label=p.label, confidence=p.confidence, score=p.score,
                  model_version=version, classified_at=classified_at, processing_ms=ms, faces=p.faces)


def classify(jobs: list[Job], settings: Settings, sessions: sessionmaker, classifier: ClassifierLike,
             dedupe: bool) -> Classified:
    """Classify each new bytes once; the rows of the originals, and what the copies refer to."""
    with sessions() as session:
        found = first_classified_by_sha(session, (j.sha256 for j in jobs)) if dedupe else {}
        known = {h: Verdict.of(r) for h, r in found.items()}
    originals, duplicates = split_duplicates(jobs, known, dedupe)
    predictions = classifier.classify_bytes([j.path for j in originals.values()],
                                            [j.data for j in originals.values()], settings.max_pixels,
                                            time_limit=settings.batch_time_limit,
                                            images=[j.image for j in originals.values()])
    for job in jobs:
        # Classified, or a duplicate: the bytes go now, from every list that holds the job (a
        # batch holds up to batch size x MOODWATCH_MAX_FILE_BYTES of them).
        job.data = job.image = None
    version = classifier.version.name
    classified_at = datetime.now(UTC)
    rows = [_prediction_row(job, p, version, classified_at)
            for job, p in zip(originals.values(), predictions, strict=True) if not p.unstarted]
    unstarted = {key for key, p in zip(originals, predictions, strict=True) if p.unstarted}
    return _without_unstarted(Classified(rows, originals, duplicates, known), unstarted)


def _without_unstarted(batch: Classified, keys: set[str]) -> Classified:
    """The batch without the originals never decoded (by their keys in batch.originals) and the
    copies of their bytes in this batch, which would refer to a row that is not written: those
    are the batch's `unstarted`."""
    if not keys:
        return batch
    unstarted = [job for k, job in batch.originals.items() if k in keys]
    shas = {j.sha256 for j in unstarted}
    copies = [j for j in batch.duplicates if j.sha256 in shas and j.sha256 not in batch.known]
    return replace(batch, originals={k: j for k, j in batch.originals.items() if k not in keys},
                   duplicates=[j for j in batch.duplicates if all(j is not c for c in copies)],
                   unstarted=unstarted + copies)


@dataclass(frozen=True)
class HandedBack:
    """The files whose decode had not begun when the batch's time limit came."""

    items: list[dict[str, Any]]  # for a later job, as they came (their claims stay: same bytes)
    rows: list[Outcome]  # or, with nowhere to send them, a `failed` row each


def hand_back_unstarted(batch: Classified, can_hand_back: bool, settings: Settings,
                        now: datetime) -> HandedBack:
    """The batch's unstarted files (every decode thread was held by slow ones) go back to the
    queue as they came, for a later job; with nowhere to send them, each gets a `failed` row."""
    if can_hand_back:
        return HandedBack([job.item.wire() for job in batch.unstarted], [])
    return HandedBack([], [row_of(job, status=Status.FAILED, classified_at=now,
                                  error=f"not decoded: the batch's time limit "
                                        f"({settings.batch_time_limit:g} s) came before its turn")
                           for job in batch.unstarted])
