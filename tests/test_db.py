from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, inspect, select

from db.engine import make_engine, make_sessionmaker
from db.migrate import current_revision, upgrade
from db.models import Result
from db.repository import ResultFilter, insert_results, query_results, stats


def _row(i: int, **kw):
    base = dict(event_id=f"e{i}", path=f"/in/{i}.jpg", file_name=f"{i}.jpg", sha256=f"{i:064d}",
                status="classified", label="happy" if i % 2 else "sad", confidence=0.8, score=0.2,
                model_version="v1", received_at=datetime.now(UTC) - timedelta(hours=i),
                classified_at=datetime.now(UTC))
    base.update(kw)
    return base


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
    from db.repository import result_row

    now = datetime.now(UTC)
    with pytest.raises(TypeError):
        result_row("e", "/in/a.jpg", now)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown status 'done'"):
        result_row("e", "/in/a.jpg", now, status="done")
    assert result_row("e", "/in/a.jpg", now, status="rejected")["status"] == "rejected"
