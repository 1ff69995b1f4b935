"""A file from a folder in the inbox keeps that folder under processed/<label>/ and rejected/
(MOODWATCH_KEEP_FOLDERS), and no relative path, `..` or linked folder, leads a move outside."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import Result
from moodwatch.outcome import Outcome
from moodwatch.outcome_moves import move_outcomes
from moodwatch.registry import Registry
from moodwatch.settings import Settings
from tests.imagegen import face_like, write_image
from worker.inference import Classifier
from worker.processing import process_batch


def _settings(tmp_path: Path, **kw) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models", **kw)
    settings.inbox_dir.mkdir(parents=True)
    return settings


class Rows:
    """The stored_path column of some rows, as move_outcomes records it."""

    def __init__(self, rows: list[Outcome]):
        self.where = {r.event_id: r.stored_path for r in rows}

    def __call__(self, where: dict[str, str]) -> None:
        self.where.update(where)


def _row(path: Path | str, label: str = "happy", n: int = 0, status: str = "classified") -> Outcome:
    return Outcome.new(f"{n:040x}", str(path), datetime.now(UTC), status=status,
                       label=label if status == "classified" else None)


def _move(settings: Settings, rows: list[Outcome]) -> Rows:
    recorded = Rows(rows)
    move_outcomes(rows, settings, recorded)
    return recorded


def test_a_classified_photo_keeps_its_folder_and_its_row_points_there(tmp_path, tiny_model_dir):
    """The whole worker path: classify, record, move; the row names the nested destination."""
    settings = Settings(data_dir=tmp_path / "data", model_dir=tiny_model_dir)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    photo = write_image(settings.inbox_dir / "trip" / "day1" / "beach.jpg", face_like("happy", 3))
    text = settings.inbox_dir / "trip" / "day1" / "notes.jpg"
    text.write_text("not an image")
    messages = [{"event_id": hashlib.sha256(p.name.encode()).hexdigest()[:40], "path": str(p),
                 "received_at": datetime.now(UTC).isoformat()} for p in (photo, text)]
    classifier = Classifier(Registry(settings.model_dir).require_current(), batch_size=2)
    try:
        process_batch(messages, settings, sessions, classifier)
    finally:
        classifier.close()
    with sessions() as s:
        rows = {r.file_name: r for r in s.scalars(select(Result))}
    beach = rows["beach.jpg"]
    assert beach.status == "classified"
    assert Path(beach.stored_path) == settings.processed_dir / beach.label / "trip" / "day1" / "beach.jpg"
    assert Path(beach.stored_path).is_file() and not photo.exists()
    notes = rows["notes.jpg"]
    assert Path(notes.stored_path) == settings.rejected_dir / "trip" / "day1" / "notes.jpg"
    assert Path(notes.stored_path).read_text() == "not an image"


def test_flat_when_keep_folders_is_off(tmp_path):
    settings = _settings(tmp_path, keep_folders=False)
    src = settings.inbox_dir / "trip" / "a.jpg"
    src.parent.mkdir()
    src.write_bytes(b"a")
    recorded = _move(settings, [_row(src)])
    assert recorded.where[_row(src).event_id] == str(settings.processed_dir / "happy" / "a.jpg")


def test_dot_dot_in_a_path_never_leads_outside(tmp_path):
    settings = _settings(tmp_path)
    inbox = settings.inbox_dir
    (inbox / "trip").mkdir()
    (inbox / "day1").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    escaping = outside / "x.jpg"
    escaping.write_bytes(b"x")
    inner = inbox / "day1" / "y.jpg"
    inner.write_bytes(b"y")
    rows = [_row(f"{inbox}/trip/../../outside/x.jpg", n=1),  # names a file outside the inbox
            _row(f"{inbox}/trip/../day1/y.jpg", n=2)]  # inside, once `..` is resolved
    recorded = _move(settings, rows)
    assert escaping.read_bytes() == b"x"  # not the inbox's: never moved
    assert recorded.where[rows[0].event_id] == rows[0].path
    assert recorded.where[rows[1].event_id] == str(settings.processed_dir / "happy" / "day1" / "y.jpg")
    assert not (settings.processed_dir / "happy" / "trip").exists()
    assert sorted(p.name for p in settings.data_dir.rglob("*") if ".." in p.name) == []


def test_a_linked_folder_in_the_inbox_names_no_folder_of_its_own(tmp_path):
    """A link to a folder inside the inbox keeps the real folder's name; a link to a folder
    outside it is no part of the inbox, and its files stay where they are."""
    settings = _settings(tmp_path)
    inbox = settings.inbox_dir
    (inbox / "trip").mkdir()
    (inbox / "alias").symlink_to(inbox / "trip", target_is_directory=True)
    real = inbox / "trip" / "a.jpg"
    real.write_bytes(b"a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (inbox / "away").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "b.jpg").write_bytes(b"b")
    rows = [_row(inbox / "alias" / "a.jpg", n=1), _row(inbox / "away" / "b.jpg", n=2)]
    recorded = _move(settings, rows)
    assert recorded.where[rows[0].event_id] == str(settings.processed_dir / "happy" / "trip" / "a.jpg")
    assert not (settings.processed_dir / "happy" / "alias").exists()
    assert (elsewhere / "b.jpg").read_bytes() == b"b"
    assert recorded.where[rows[1].event_id] == str(inbox / "away" / "b.jpg")


def test_a_link_where_a_kept_folder_would_be_is_never_followed(tmp_path):
    """processed/happy/trip is a link to a folder elsewhere: the file goes flat into
    processed/happy/ and nothing is written through the link."""
    settings = _settings(tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    happy = settings.processed_dir / "happy"
    happy.mkdir(parents=True)
    (happy / "trip").symlink_to(target, target_is_directory=True)
    src = settings.inbox_dir / "trip" / "day1" / "a.jpg"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"a")
    recorded = _move(settings, [_row(src)])
    assert recorded.where[_row(src).event_id] == str(happy / "a.jpg")
    assert (happy / "a.jpg").read_bytes() == b"a"
    assert not list(target.iterdir())


def test_a_folder_name_too_long_once_made_printable_is_shortened(tmp_path):
    """Raw bytes become four characters each (\\xff): a 100-byte folder name becomes 400, too
    long for a folder name; it is shortened like a file name, and stays distinct."""
    settings = _settings(tmp_path)
    raw = os.fsdecode(b"\xff" * 100)
    folder = settings.inbox_dir / raw
    folder.mkdir()
    src = folder / "a.jpg"
    src.write_bytes(b"a")
    recorded = _move(settings, [_row(src)])
    dest = Path(recorded.where[_row(src).event_id])
    assert dest.name == "a.jpg" and dest.read_bytes() == b"a"
    assert dest.parent.parent == settings.processed_dir / "happy"
    assert dest.parent.name.startswith("\\xff") and len(os.fsencode(dest.parent.name)) <= 255
