"""Writes and queries on the results table; plain functions over a Session."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Result, Submission
from moodwatch.files import printable, raw_bytes
from moodwatch.outcome import Outcome
from moodwatch.vocab import STATUSES, Status

RESULT_COLUMNS = [c.name for c in Result.__table__.columns]
OUTCOME_FIELDS = [f.name for f in fields(Outcome)]  # every column but the id
# Rows per INSERT and ids per IN (...): far below PostgreSQL's 65,535 parameters a statement and
# SQLite's 32,766, whatever a caller hands in.
CHUNK = 500


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def storable(outcome: Outcome) -> dict[str, Any]:
    """An outcome as the database can hold it: the status as its plain word, and any name the
    filesystem allows (bytes that are not UTF-8, control characters) as printable text, the raw
    path kept in path_bytes."""
    row = {name: getattr(outcome, name) for name in OUTCOME_FIELDS} | {"status": outcome.status.value}
    out = {k: printable(v) if isinstance(v, str) else v for k, v in row.items()}
    if out["path"] != outcome.path:
        out["path_bytes"] = raw_bytes(outcome.path)
    return out


def outcome_of(row: Result) -> Outcome:
    """A row read back as the outcome it records."""
    return Outcome(**{name: getattr(row, name) for name in OUTCOME_FIELDS})


def set_stored_paths(session: Session, moved: dict[str, str]) -> None:
    """Record where files are (event id -> path)."""
    for event_id, stored_path in moved.items():
        session.execute(update(Result).where(Result.event_id == event_id)
                        .values(stored_path=printable(stored_path)))


def insert_new_results(session: Session, rows: Sequence[Outcome]) -> set[str]:
    """Insert the rows of these outcomes, ignoring any whose event_id is already recorded;
    returns the ids added."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = Result.__table__
    # One statement with the rows as parameters (SQLAlchemy's "insertmanyvalues"): compiled once
    # and cached, where a VALUES list built per batch was compiled again, bind by bind, every
    # time (a third of a worker's bookkeeping per photo). Every row names every column.
    stmt = (insert(table).on_conflict_do_nothing(index_elements=["event_id"])
            .returning(table.c.event_id))
    added: set[str] = set()
    for chunk in _chunks([{"path_bytes": None, **storable(r)} for r in rows]):
        added.update(session.execute(stmt, list(chunk)).scalars())
    return added


def insert_results(session: Session, rows: Sequence[Outcome]) -> int:
    """Insert the rows of these outcomes, ignoring any whose event_id is already recorded;
    returns how many were added."""
    return len(insert_new_results(session, rows))


def recorded_event_ids(session: Session, event_ids: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(list(event_ids)):
        found.update(session.scalars(select(Result.event_id).where(Result.event_id.in_(chunk))))
    return found


def register_submissions(session: Session, paths: dict[str, str]) -> None:
    """Record files submitted by hand from outside the inbox (event id -> path)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = datetime.now(UTC)
    values = [{"event_id": e, "path": printable(p), "submitted_at": now} for e, p in paths.items()]
    for chunk in _chunks(values):
        session.execute(insert(Submission).values(list(chunk)).on_conflict_do_nothing())


def submitted_paths(session: Session, event_ids: Iterable[str]) -> dict[str, str]:
    """Event id -> path, for the given events that `submit` registered."""
    found: dict[str, str] = {}
    for chunk in _chunks(list(event_ids)):
        stmt = select(Submission.event_id, Submission.path).where(Submission.event_id.in_(chunk))
        found.update((event_id, path) for event_id, path in session.execute(stmt))
    return found


def unmoved_rows(session: Session, event_ids: list[str], before: datetime) -> list[Outcome]:
    """Outcomes of these events that move a file, recorded before `before`."""
    out = []
    for chunk in _chunks(event_ids):
        stmt = (select(Result)
                .where(Result.event_id.in_(chunk), Result.status.in_([Status.CLASSIFIED, Status.REJECTED]),
                       (Result.classified_at.is_(None)) | (Result.classified_at <= before)))
        out += [outcome_of(r) for r in session.scalars(stmt)]
    return out


def outcomes_of(session: Session, event_ids: list[str]) -> list[Outcome]:
    """The outcomes these events have, whatever their status or age: how the watcher of the
    broker transport learns that the files it sent are recorded."""
    out = []
    for chunk in _chunks(event_ids):
        out += [outcome_of(r) for r in session.scalars(select(Result).where(Result.event_id.in_(chunk)))]
    return out


def rows_for_arrivals(session: Session, event_ids: Iterable[str], hashes: Iterable[str]) -> list[Result]:
    """Rows of these arrivals, or of files with these bytes (both columns are indexed)."""
    ids, shas = list(event_ids), [h for h in hashes if h]
    if not ids and not shas:
        return []
    return list(session.scalars(select(Result).where(or_(Result.event_id.in_(ids), Result.sha256.in_(shas)))))


def lock_hashes(session: Session, hashes: list[str]) -> None:
    """Serialise writers that handle the same bytes, until the transaction ends."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        for h in sorted(set(hashes)):  # one order for everybody: no deadlocks
            session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:h, 0))"), {"h": h})
    elif dialect == "sqlite":
        # A write statement takes SQLite's single write lock now, before the reads that follow.
        session.execute(text("UPDATE results SET id = id WHERE 0"))


def first_classified_by_sha(session: Session, hashes: Iterable[str]) -> dict[str, Result]:
    """The earliest classified, non-duplicate row for each sha256."""
    hs = [h for h in set(hashes) if h]
    if not hs:
        return {}
    rows = session.scalars(
        select(Result)
        .where(Result.sha256.in_(hs), Result.status == Status.CLASSIFIED, Result.duplicate_of.is_(None))
        .order_by(Result.id)
    )
    found: dict[str, Result] = {}
    for row in rows:
        found.setdefault(row.sha256, row)
    return found


@dataclass
class ResultFilter:
    label: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    limit: int = 50
    before_id: int | None = None  # keyset paging: rows older than this id, fast at any depth


def query_results(session: Session, f: ResultFilter) -> list[Result]:
    stmt = select(Result)
    if f.label:
        stmt = stmt.where(Result.label == f.label)
    if f.status:
        stmt = stmt.where(Result.status == f.status)
    if f.since:
        stmt = stmt.where(Result.received_at >= f.since)
    if f.until:
        stmt = stmt.where(Result.received_at < f.until)
    if f.model:
        stmt = stmt.where(Result.model_version == f.model)
    if f.min_confidence is not None:
        stmt = stmt.where(Result.confidence >= f.min_confidence)
    if f.max_confidence is not None:
        stmt = stmt.where(Result.confidence <= f.max_confidence)
    if f.before_id is not None:
        stmt = stmt.where(Result.id < f.before_id)
    stmt = stmt.order_by(Result.id.desc())
    if f.limit:
        stmt = stmt.limit(f.limit)
    return list(session.scalars(stmt))


def review_queue(session: Session, limit: int = 24) -> list[Result]:
    """Classified rows nobody has reviewed, least confident first."""
    stmt = (select(Result)
            .where(Result.status == Status.CLASSIFIED, Result.reviewed_at.is_(None),
                   Result.duplicate_of.is_(None))
            .order_by(Result.confidence.asc(), Result.id.asc()).limit(limit))
    return list(session.scalars(stmt))


def agreement_by_model(session: Session) -> dict[str, dict[str, int]]:
    """Per model version: how many reviewed rows the person agreed with."""
    rows = session.execute(
        select(Result.model_version, Result.label == Result.human_label, func.count())
        .where(Result.human_label.in_(["happy", "sad"]))
        .group_by(Result.model_version, Result.label == Result.human_label)
    ).all()
    out: dict[str, dict[str, int]] = {}
    for model, agreed, n in rows:
        entry = out.setdefault(model or "?", {"agreed": 0, "reviewed": 0})
        entry["reviewed"] += n
        if agreed:
            entry["agreed"] += n
    return out


def as_dict(row: Result) -> dict[str, Any]:
    out = {}
    for name in RESULT_COLUMNS:
        value = getattr(row, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, bytes):
            value = value.hex()  # path_bytes, for JSON and CSV
        out[name] = value
    return out


def stats(session: Session, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    by_status = dict(session.execute(select(Result.status, func.count()).group_by(Result.status)).all())
    by_label = dict(
        session.execute(
            select(Result.label, func.count()).where(Result.label.is_not(None)).group_by(Result.label)
        ).all()
    )
    hour_ago = now - timedelta(hours=1)
    last_hour = session.scalar(
        select(func.count()).select_from(Result)
        .where(Result.classified_at >= hour_ago, Result.status == Status.CLASSIFIED)
    ) or 0
    return {
        "total": sum(by_status.values()),
        "by_status": by_status,
        "by_label": by_label,
        "last_hour": last_hour,
        "per_minute_last_hour": round(last_hour / 60, 2),
    }


def upsert_model_version(session: Session, name: str, architecture: str | None, metrics: dict[str, Any],
                         promoted: bool, created_at: datetime | None = None) -> None:
    """Mirror a registry version into the model_versions table (for SQL users)."""
    from db.models import ModelVersion

    row = session.get(ModelVersion, name) or ModelVersion(
        name=name, created_at=created_at or datetime.now(UTC))
    row.architecture = architecture
    row.accuracy = metrics.get("accuracy")
    row.precision = metrics.get("precision")
    row.recall = metrics.get("recall")
    row.f1 = metrics.get("f1")
    row.promoted = promoted
    row.metrics = {k: v for k, v in metrics.items() if k not in ("scores", "truth")}
    session.merge(row)


# Model versions published for workers on other machines (moodwatch.publication).

def publish_model(session: Session, name: str, archive: bytes, sha256: str, promote: bool) -> None:
    """Store (or replace) a version's archive; promote: make it the current version too."""
    from db.models import ModelPublication

    now = datetime.now(UTC)
    row = session.get(ModelPublication, name) or ModelPublication(name=name)
    row.archive, row.sha256, row.size, row.published_at = archive, sha256, len(archive), now
    if promote:
        row.promoted_at = now
    session.merge(row)


def promote_published(session: Session, name: str) -> bool:
    """Make a version already published current; False when it is not published."""
    from db.models import ModelPublication

    done = session.execute(update(ModelPublication).where(ModelPublication.name == name)
                           .values(promoted_at=datetime.now(UTC)))
    return done.rowcount > 0


def published_current(session: Session) -> tuple[str, str] | None:
    """(name, sha256) of the version promoted last, without its archive (asked every few seconds)."""
    from db.models import ModelPublication

    row = session.execute(
        select(ModelPublication.name, ModelPublication.sha256)
        .where(ModelPublication.promoted_at.is_not(None))
        .order_by(ModelPublication.promoted_at.desc(), ModelPublication.name.desc()).limit(1)
    ).first()
    return None if row is None else (row.name, row.sha256)


def published_archive(session: Session, name: str) -> tuple[bytes, str] | None:
    """(archive, sha256 recorded at publication) of a version, or None."""
    from db.models import ModelPublication

    row = session.execute(select(ModelPublication.archive, ModelPublication.sha256)
                          .where(ModelPublication.name == name)).first()
    return None if row is None else (bytes(row.archive), row.sha256)


def published_names(session: Session) -> list[str]:
    from db.models import ModelPublication

    return list(session.scalars(select(ModelPublication.name).order_by(ModelPublication.name)))


def count_by_status(session: Session) -> dict[str, int]:
    """Rows per status, every status present (0 where none): what /metrics shows."""
    found = dict(session.execute(select(Result.status, func.count()).group_by(Result.status)).all())
    return {status: int(found.get(status, 0)) for status in STATUSES}
