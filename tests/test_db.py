from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, inspect, select

from db.engine import make_engine, make_sessionmaker
from db.migrate import current_revision, upgrade
from db.models import Result
from db.repository import (
    OUTCOME_FIELDS,
    RESULT_COLUMNS,
    ResultFilter,
    insert_results,
    outcomes_of,
    query_results,
    stats,
    unmoved_rows,
)
from moodwatch.outcome import Outcome
from moodwatch.vocab import Status


def _row(i: int, event_id: str | None = None) -> Outcome:
    return Outcome.new(event_id or f"e{i}", f"/in/{i}.jpg", datetime.now(UTC) - timedelta(hours=i),
                       sha256=f"{i:064d}", status="classified", label="happy" if i % 2 else "sad",
                       confidence=0.8, score=0.2, model_version="v1", classified_at=datetime.now(UTC))


def test_migrations_create_schema_and_indexes(db_url):
    from alembic.script import ScriptDirectory

    from db.migrate import alembic_config

    upgrade(db_url)
    assert current_revision(db_url) == ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    upgrade(db_url)  # idempotent
    engine = make_engine(db_url)
    insp = inspect(engine)
    assert {"results", "model_versions", "alembic_version"} <= set(insp.get_table_names())
    indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes("results")}
    assert {("received_at",), ("label",), ("sha256",), ("status",)} <= indexed
    engine.dispose()


def test_insert_is_idempotent_and_queries_filter(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    with sessions() as s, s.begin():
        assert insert_results(s, [_row(i) for i in range(6)]) == 6
    with sessions() as s, s.begin():
        # A redelivered job: same event ids, nothing new.
        assert insert_results(s, [_row(i) for i in range(6)]) == 0
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Result)) == 6
        assert {r.label for r in query_results(s, ResultFilter(label="sad", limit=0))} == {"sad"}
        recent = query_results(s, ResultFilter(since=datetime.now(UTC) - timedelta(hours=2, minutes=30)))
        assert sorted(r.event_id for r in recent) == ["e0", "e1", "e2"]
        assert len(query_results(s, ResultFilter(limit=2))) == 2
        st = stats(s)
        assert st["total"] == 6 and st["by_label"] == {"happy": 3, "sad": 3}
        assert st["last_hour"] == 6
    engine.dispose()


def test_a_large_insert_is_chunked_under_the_parameter_limits(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    rows = [_row(i, event_id=f"big{i}") for i in range(8000)]  # ~150,000 parameters in one statement
    with sessions() as s, s.begin():
        assert insert_results(s, rows) == 8000
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Result)) == 8000
    engine.dispose()


def test_an_outcome_has_a_field_for_every_column_but_the_id():
    """A column added to the table and not to moodwatch.outcome.Outcome would never be written."""
    assert set(OUTCOME_FIELDS) == set(RESULT_COLUMNS) - {"id"}


def test_outcomes_read_back_are_the_outcomes_written(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC)
    written = [Outcome.new("c", "/in/c.jpg", now, status="classified", label="sad", confidence=0.9,
                           faces=[[0.1, 0.2, 0.3, 0.4]], sha256="ab" * 32),
               Outcome.new("r", "/in/r.txt", now, status="rejected", error="not an image", classified_at=now),
               Outcome.new("f", "/in/f.jpg", now, status="failed", error="gone", classified_at=now)]
    with sessions() as s, s.begin():
        insert_results(s, written)
    with sessions() as s:
        back = {o.event_id: o for o in outcomes_of(s, ["c", "r", "f", "never"])}
        unmoved = unmoved_rows(s, ["c", "r", "f"], now + timedelta(seconds=1))
    engine.dispose()
    for o in written:  # SQLite gives its times back without their zone
        assert replace(back[o.event_id], received_at=o.received_at, classified_at=o.classified_at) == o
    assert back["c"].status is Status.CLASSIFIED
    assert sorted(o.event_id for o in unmoved) == ["c", "r"]  # a failure moves no file


def test_duplicate_of_is_indexed(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    indexed = {tuple(ix["column_names"]) for ix in inspect(engine).get_indexes("results")}
    engine.dispose()
    assert ("duplicate_of",) in indexed  # deleting rows checks the foreign key: no full scan each


def test_visibility_timeout_fits_a_batch_not_ten_minutes():
    from moodwatch.jobs import UNREACHABLE_ATTEMPTS
    from moodwatch.queue import make_celery
    from moodwatch.settings import Settings

    s = Settings(broker_url="redis://127.0.0.1:1/0")
    longest_countdown = max(30, 5 * 2 ** (UNREACHABLE_ATTEMPTS - 1))  # retry backoff max, hand-back
    assert longest_countdown < s.visibility_timeout <= 180
    assert make_celery(s).conf.broker_transport_options["visibility_timeout"] == s.visibility_timeout


def test_the_tests_row_counter_fails_when_the_database_is_down(tmp_path):
    """"No rows yet" must not pass with the database down: Rows.count returned 0 on any error."""
    import sqlalchemy.exc

    from tests.procs import Rows

    assert Rows(f"sqlite:///{tmp_path / 'fresh.db'}").count() == 0  # no table yet: no rows yet
    down = Rows("postgresql://postgres@127.0.0.1:1/moodwatch")  # nothing listens on port 1
    with pytest.raises(sqlalchemy.exc.OperationalError):
        down.count()


def test_a_row_names_its_outcome():
    """No default outcome: a caller that forgot the status used to record "failed"."""
    now = datetime.now(UTC)
    with pytest.raises(TypeError):
        Outcome.new("e", "/in/a.jpg", now)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown status 'done'"):
        Outcome.new("e", "/in/a.jpg", now, status="done")
    assert Outcome.new("e", "/in/a.jpg", now, status="rejected").status == "rejected"
