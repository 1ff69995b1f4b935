"""Log lines about database errors name the error and the driver's message, never the SQL
statement, its parameters (paths, hashes by the hundred) or a password of a URL.

The errors are real: a SQLite file with no tables, which every statement fails on."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

import pytest

from db.engine import make_engine, make_sessionmaker
from db.errors import describe
from moodwatch.outcome import Outcome
from moodwatch.settings import Settings
from tests.imagegen import face_like, write_image
from watcher.service import Watcher
from watcher.validation import Checked
from worker.moves import move_recorded

SQL_WORDS = ("SELECT", "INSERT", "UPDATE", "[SQL", "[parameters", "FROM results", "sqlalche.me")


@pytest.fixture
def tableless(tmp_path):
    """Sessions on a real SQLite file that has no tables (never migrated)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    yield make_sessionmaker(engine)
    engine.dispose()


def _eid(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()[:40]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _assert_clean(lines: list[str], *secrets: str) -> None:
    assert lines
    for line in lines:
        assert "OperationalError: no such table: " in line, line
        assert not any(w in line for w in SQL_WORDS), line
        assert not any(s in line for s in secrets), line


def test_watcher_database_warnings_carry_no_sql(tmp_path, tableless, caplog):
    settings = Settings(data_dir=tmp_path / "data")
    bad = write_image(settings.inbox_dir / "notes.jpg", face_like("sad", 1))
    watcher = Watcher(settings, send=lambda msgs: None, sessions=tableless)
    eid = _eid("rejected")
    watcher.take(Checked(str(bad), eid, rejected="not an image"))
    with caplog.at_level(logging.WARNING):
        watcher.record_rejections()  # checks what is recorded, then inserts: both fail
    lines = _warnings(caplog)
    assert any("rejection(s) kept for retry" in line for line in lines)
    assert any("cannot check which files are recorded" in line for line in lines)
    _assert_clean(lines, eid, str(bad))


def test_worker_move_warning_carries_no_sql(tmp_path, tableless, caplog):
    settings = Settings(data_dir=tmp_path / "data")
    photo = write_image(settings.inbox_dir / "party.jpg", face_like("happy", 2))
    eid = _eid("classified")
    row = Outcome.new(eid, str(photo), datetime.now(UTC), status="classified", label="happy",
                      confidence=0.9, score=0.1, classified_at=datetime.now(UTC))
    with caplog.at_level(logging.WARNING):
        move_recorded([row], settings, tableless)  # recording where the file goes fails: nothing moves
    lines = [line for line in _warnings(caplog) if "not moved yet" in line]
    _assert_clean(lines, eid, str(photo))
    assert photo.exists()


def test_describe_keeps_the_driver_message_and_masks_passwords(tableless):
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError) as caught, tableless() as session:
        session.execute(text("SELECT secret_column FROM results WHERE path = :p"), {"p": "/in/secret.jpg"})
    assert "secret_column" in str(caught.value)  # SQLAlchemy's own text: the statement and all
    assert describe(caught.value) == "OperationalError: no such table: results"
    leaky = OperationalError("SELECT 1", {}, RuntimeError(
        "cannot reach postgresql://moodwatch:hunter2@db:5432/m\nLINE 1: SELECT 1"))
    assert describe(leaky) == "RuntimeError: cannot reach postgresql://moodwatch:***@db:5432/m"
