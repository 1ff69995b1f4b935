"""process_batch against real databases, without Celery."""

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import Result
from moodwatch.files import event_id_for
from moodwatch.registry import Registry
from tests.imagegen import encode, face_like, write_image
from worker.inference import Classifier
from worker.processing import process_batch


def _msg(path, i):
    event_id = hashlib.sha256(f"ev-{i}".encode()).hexdigest()[:40]  # ids are checked: 40 hex digits
    return {"event_id": event_id, "path": str(path), "received_at": datetime.now(UTC).isoformat()}


def test_batch_with_bad_files_and_duplicates(db_url, settings, tmp_path):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    classifier = Classifier(Registry(settings.model_dir).require_current(), batch_size=4)
    inbox = settings.inbox_dir
    good = [write_image(inbox / f"g{i}.jpg", face_like("happy" if i % 2 else "sad", i)) for i in range(6)]
    twin = inbox / "twin.jpg"
    twin.write_bytes(good[0].read_bytes())
    text = inbox / "text.jpg"
    text.write_text("not an image")
    cut = inbox / "cut.png"
    cut.write_bytes(encode(face_like("sad", 1, 120))[:200])
    missing = inbox / "gone.jpg"
    files = [*good, twin, text, cut, missing]
    messages = [_msg(p, i) for i, p in enumerate(files)]

    counts = process_batch(messages, settings, sessions, classifier, move_files=False)
    assert counts == {"classified": 7, "rejected": 2, "failed": 1}

    with sessions() as s:
        rows = {r.file_name: r for r in s.scalars(select(Result))}
    assert len(rows) == len(files)
    for p in good:
        r = rows[p.name]
        assert r.status == "classified" and r.label in ("happy", "sad")
        assert 0.5 <= r.confidence <= 1 and r.model_version == classifier.version.name
        assert abs(r.confidence - (r.score if r.label == "sad" else 1 - r.score)) < 1e-6
    dup = rows["twin.jpg"]
    assert dup.duplicate_of == rows["g0.jpg"].id and dup.label == rows["g0.jpg"].label
    assert "signature" in rows["text.jpg"].error and rows["text.jpg"].status == "rejected"
    assert rows["cut.png"].status == "rejected" and "truncated" in rows["cut.png"].error
    assert rows["gone.jpg"].status == "failed" and "not found" in rows["gone.jpg"].error

    # Redelivery of the same job adds nothing.
    assert process_batch(messages, settings, sessions, classifier, move_files=False) == {"skipped": 10}
    with sessions() as s:
        assert len(list(s.scalars(select(Result)))) == len(files)

    # The same bytes in a later job refer to the first row too.
    again = inbox / "again.jpg"
    again.write_bytes(good[3].read_bytes())
    process_batch([_msg(again, 99)], settings, sessions, classifier, move_files=False)
    with sessions() as s:
        row = s.scalars(select(Result).where(Result.file_name == "again.jpg")).one()
        assert row.duplicate_of == rows["g3.jpg"].id and row.status == "classified"
    classifier.close()


def test_files_are_moved_not_deleted(sqlite_url, settings):
    upgrade(sqlite_url)
    sessions = make_sessionmaker(make_engine(sqlite_url))
    classifier = Classifier(Registry(settings.model_dir).require_current(), batch_size=4)
    inbox = settings.inbox_dir
    ok = write_image(inbox / "ok.jpg", face_like("happy", 1))
    bad = inbox / "bad.jpg"
    bad.write_text("text")
    process_batch([_msg(ok, 1), _msg(bad, 2)], settings, sessions, classifier)
    with sessions() as s:
        rows = {r.file_name: r for r in s.scalars(select(Result))}
    moved_ok = rows["ok.jpg"].stored_path
    assert moved_ok.startswith(str(settings.processed_dir / rows["ok.jpg"].label))
    assert os.path.isfile(moved_ok) and not ok.exists()
    assert rows["bad.jpg"].stored_path == str(settings.rejected_dir / "bad.jpg")
    assert (settings.rejected_dir / "bad.jpg").read_text() == "text"
    classifier.close()


def test_worker_picks_up_a_newly_promoted_model(tmp_path, tiny_model_dir):
    import shutil

    from moodwatch.registry import Version
    from worker.inference import ModelCache

    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    registry = Registry(models)
    first = registry.require_current()
    cache = ModelCache(registry, batch_size=4, check_every=0)
    assert cache.get().version == first
    newer = models / "vzz-newer"
    shutil.copytree(first.path, newer)
    registry.promote(Version("vzz-newer", newer))
    assert cache.get().version.name == "vzz-newer"


def test_unreachable_file_is_handed_back_then_fails_with_a_row(sqlite_url, settings):
    from worker.processing import UNREACHABLE_ATTEMPTS

    upgrade(sqlite_url)
    sessions = make_sessionmaker(make_engine(sqlite_url))
    classifier = Classifier(Registry(settings.model_dir).require_current(), batch_size=4)
    ok = write_image(settings.inbox_dir / "here.jpg", face_like("happy", 1))
    msgs = [_msg(ok, 1), _msg(settings.inbox_dir / "on-another-mount.jpg", 2)]
    sink: list = []
    counts = process_batch(msgs, settings, sessions, classifier, move_files=False, retry_sink=sink)
    assert counts == {"classified": 1, "retried": 1} and sink[0]["attempts"] == 1
    # Handed on until the last attempt, which records the failure with its reason.
    for attempt in range(2, UNREACHABLE_ATTEMPTS + 1):
        msgs, sink = sink, []
        counts = process_batch(msgs, settings, sessions, classifier, move_files=False, retry_sink=sink)
        if attempt < UNREACHABLE_ATTEMPTS:
            assert sink and sink[0]["attempts"] == attempt
    assert not sink and counts == {"failed": 1}
    with sessions() as s:
        row = s.scalars(select(Result).where(Result.file_name == "on-another-mount.jpg")).one()
    assert row.status == "failed" and "not found or unreadable on this worker" in row.error
    classifier.close()


class MeetingClassifier:
    """Classifies only once every worker sharing its barrier is classifying too: the two batches
    provably overlap (the race under test), or the barrier times out and the test fails."""

    def __init__(self, name: str, barrier=None):
        from moodwatch.registry import Version

        self.version = Version(name, Path("/nonexistent"))
        self.barrier = barrier

    def classify_bytes(self, names, blobs, max_pixels, time_limit=None):
        from worker.inference import Prediction

        if self.barrier is not None:
            self.barrier.wait()
        return [Prediction(p, "happy", 0.8, 0.2) for p in names]


def test_same_bytes_in_two_concurrent_batches_are_classified_once(db_url, settings):
    import threading

    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    original = write_image(settings.inbox_dir / "a.jpg", face_like("happy", 1))
    twin = settings.inbox_dir / "b.jpg"
    twin.write_bytes(original.read_bytes())
    errors = []
    overlap = threading.Barrier(2, timeout=30)

    def worker(path, i, name):
        try:
            process_batch([_msg(path, i)], settings, sessions, MeetingClassifier(name, overlap),
                          move_files=False)
        except threading.BrokenBarrierError:
            errors.append("the two batches never classified at the same time")
        except Exception as exc:  # SQLite may refuse the loser's write: Celery retries it
            errors.append(exc)
            process_batch([_msg(path, i)], settings, sessions, MeetingClassifier(name), move_files=False)

    threads = [threading.Thread(target=worker, args=(p, i, f"v{i}")) for i, p in enumerate([original, twin])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "the two batches never classified at the same time" not in errors
    with sessions() as s:
        rows = list(s.scalars(select(Result).order_by(Result.id)))
    assert len(rows) == 2
    first, second = rows
    assert first.duplicate_of is None and second.duplicate_of == first.id
    assert second.model_version == first.model_version  # the first one's verdict, not its own


class Crash(BaseException):
    """Stands for the process dying at that point (nothing after it runs)."""


def _one_photo_batch(settings, sqlite_url, name="crash.jpg"):
    upgrade(sqlite_url)
    sessions = make_sessionmaker(make_engine(sqlite_url))
    photo = write_image(settings.inbox_dir / name, face_like("happy", 3))
    msg = {**_msg(photo, 1), "event_id": event_id_for(str(photo), os.lstat(photo))}  # as the watcher sends it
    return sessions, photo, [msg]


def _the_row(sessions) -> Result:
    with sessions() as s:
        return s.scalars(select(Result)).one()


def test_a_crash_right_after_the_move_leaves_the_row_pointing_at_the_file(sqlite_url, settings, monkeypatch):
    import moodwatch.outcome_moves

    sessions, photo, msgs = _one_photo_batch(settings, sqlite_url)
    real_move = moodwatch.outcome_moves.move_to

    def move_then_die(*args, **kwargs):
        real_move(*args, **kwargs)
        raise Crash

    monkeypatch.setattr(moodwatch.outcome_moves, "move_to", move_then_die)
    classifier = MeetingClassifier("v1")
    with pytest.raises(Crash):
        process_batch(msgs, settings, sessions, classifier)
    row = _the_row(sessions)
    assert not photo.exists()
    assert Path(row.stored_path).parent == settings.processed_dir / "happy"
    assert Path(row.stored_path).is_file()


def test_a_crash_before_the_move_is_finished_by_the_rescan(sqlite_url, settings, monkeypatch):
    import moodwatch.outcome_moves
    from watcher.service import Watcher

    sessions, photo, msgs = _one_photo_batch(settings, sqlite_url)
    data = photo.read_bytes()

    def die(*args, **kwargs):
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(moodwatch.outcome_moves, "move_to", die)
        with pytest.raises(Crash):
            process_batch(msgs, settings, sessions, MeetingClassifier("v1"))
    assert photo.exists()  # recorded, not yet moved
    watcher = Watcher(settings.model_copy(update={"resend_seconds": 0}), lambda batch: None, sessions)
    watcher.rescan()
    row = _the_row(sessions)
    assert not photo.exists() and Path(row.stored_path).read_bytes() == data
    assert Path(row.stored_path).parent == settings.processed_dir / "happy"


def test_a_move_that_fails_is_logged_with_its_cause(sqlite_url, settings, monkeypatch, caplog):
    import errno
    import logging

    import moodwatch.outcome_moves

    sessions, photo, msgs = _one_photo_batch(settings, sqlite_url)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(moodwatch.outcome_moves, "move_to", refuse)
    with caplog.at_level(logging.WARNING):
        process_batch(msgs, settings, sessions, MeetingClassifier("v1"))
    assert photo.exists() and _the_row(sessions).stored_path == str(photo)
    assert any("could not move" in r.getMessage() and "Operation not permitted" in r.getMessage()
               for r in caplog.records)
