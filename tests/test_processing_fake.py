"""process_batch's database, de-duplication and move logic against real databases, with a fake
classifier: no model is trained or loaded, and TensorFlow is never imported for it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import Result
from moodwatch.admission import LINK
from moodwatch.files import event_id_for
from moodwatch.jobs import UNREACHABLE_ATTEMPTS
from moodwatch.registry import Version
from moodwatch.settings import Settings
from tests.imagegen import face_like, write_image
from worker.inference import Prediction
from worker.processing import process_batch

ROOT = Path(__file__).resolve().parents[1]


class FakeClassifier:
    """A ClassifierLike without a model: every file it is given is 'happy' (confidence 0.8),
    unless `outcomes` names its file; it notes the files it was given. `during` runs while it
    classifies (another worker's batch, a barrier)."""

    def __init__(self, name: str = "vfake", outcomes: dict[str, Prediction] | None = None, during=None):
        self.version = Version(name, Path("/nonexistent"))
        self.outcomes = outcomes or {}
        self.during = during
        self.seen: list[str] = []
        self.images: list = []  # the inspection handed over with each file's bytes

    def classify_bytes(self, names, blobs, max_pixels, time_limit=None, images=None):
        self.seen += [Path(n).name for n in names]
        self.images += list(images) if images is not None else [None] * len(names)
        if self.during is not None:
            self.during()
        return [self.outcomes.get(Path(n).name) or Prediction(n, "happy", 0.8, 0.2) for n in names]


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Embedded defaults under a temporary folder, and no model: the classifier is a fake."""
    return Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "no-models")


def _msg(path, i) -> dict:
    event_id = hashlib.sha256(f"ev-{i}".encode()).hexdigest()[:40]  # ids are checked: 40 hex digits
    return {"event_id": event_id, "path": str(path), "received_at": datetime.now(UTC).isoformat()}


def _sessions(url: str):
    upgrade(url)
    return make_sessionmaker(make_engine(url))


def _rows(sessions) -> dict[str, Result]:
    with sessions() as s:
        return {r.file_name: r for r in s.scalars(select(Result).order_by(Result.id))}


def _photos(settings: Settings, n: int, twins: int = 0) -> list[Path]:
    """n different photos in the inbox, then `twins` copies of the first one's bytes."""
    photos = [write_image(settings.inbox_dir / f"g{i}.jpg", face_like("happy" if i % 2 else "sad", i))
              for i in range(n)]
    for i in range(twins):
        twin = settings.inbox_dir / f"twin{i}.jpg"
        twin.write_bytes(photos[0].read_bytes())
        photos.append(twin)
    return photos


def test_each_new_bytes_is_classified_once_and_a_copy_refers_to_its_row(db_url, settings):
    sessions = _sessions(db_url)
    files = _photos(settings, 3, twins=2)
    fake = FakeClassifier()
    msgs = [_msg(p, i) for i, p in enumerate(files)]
    assert process_batch(msgs, settings, sessions, fake, move_files=False) == {"classified": 5}
    assert sorted(fake.seen) == ["g0.jpg", "g1.jpg", "g2.jpg"]
    rows = _rows(sessions)
    for twin in ("twin0.jpg", "twin1.jpg"):
        assert rows[twin].duplicate_of == rows["g0.jpg"].id and rows[twin].label == "happy"
        assert rows[twin].model_version == "vfake" and rows[twin].processing_ms == 0.0
        assert rows[twin].sha256 == rows["g0.jpg"].sha256 == hashlib.sha256(files[0].read_bytes()).hexdigest()
    assert all(rows[f"g{i}.jpg"].duplicate_of is None for i in range(3))


def test_the_admissions_inspection_reaches_the_classifier_with_the_bytes(sqlite_url, settings):
    """The worker inspects each file once, at admission; the decoder is handed that inspection
    (of the same bytes) instead of repeating it."""
    import cv2

    files = _photos(settings, 2)
    fake = FakeClassifier()
    process_batch([_msg(p, i) for i, p in enumerate(files)], settings, _sessions(sqlite_url), fake,
                  move_files=False)
    for path, info in zip(files, fake.images, strict=True):
        height, width = cv2.imread(str(path)).shape[:2]
        assert info is not None and (info.format, info.width, info.height) == ("jpeg", width, height)


def test_a_redelivered_job_adds_nothing_and_classifies_nothing(db_url, settings):
    sessions = _sessions(db_url)
    msgs = [_msg(p, i) for i, p in enumerate(_photos(settings, 2, twins=1))]
    process_batch(msgs, settings, sessions, FakeClassifier(), move_files=False)
    again = FakeClassifier()
    assert process_batch(msgs, settings, sessions, again, move_files=False) == {"skipped": 3}
    assert again.seen == [] and len(_rows(sessions)) == 3


def test_the_same_bytes_in_a_later_job_refer_to_the_first_row(db_url, settings):
    sessions = _sessions(db_url)
    first = _photos(settings, 1)[0]
    process_batch([_msg(first, 1)], settings, sessions, FakeClassifier("v1"), move_files=False)
    later = settings.inbox_dir / "later.jpg"
    later.write_bytes(first.read_bytes())
    fake = FakeClassifier("v2")
    assert process_batch([_msg(later, 2)], settings, sessions, fake, move_files=False) == {"classified": 1}
    rows = _rows(sessions)
    assert fake.seen == [] and rows["later.jpg"].duplicate_of == rows["g0.jpg"].id
    assert rows["later.jpg"].model_version == "v1"  # the first row's verdict


def test_a_copy_of_bytes_that_could_not_be_classified_gets_the_same_outcome(sqlite_url, settings):
    sessions = _sessions(sqlite_url)
    bad, twin = _photos(settings, 1, twins=1)
    fake = FakeClassifier(outcomes={bad.name: Prediction(str(bad), error="decoding failed", rejected=True)})
    counts = process_batch([_msg(bad, 1), _msg(twin, 2)], settings, sessions, fake, move_files=False)
    assert counts == {"rejected": 2} and fake.seen == [bad.name]
    rows = _rows(sessions)
    assert rows[bad.name].error == "decoding failed" and rows[bad.name].duplicate_of is None
    assert rows[twin.name].duplicate_of == rows[bad.name].id and rows[twin.name].status == "rejected"
    assert rows[twin.name].error == "same bytes as a file that could not be classified"
    # Across jobs only a classified row is referred to: the same bytes later are classified again.
    later = settings.inbox_dir / "later.jpg"
    later.write_bytes(bad.read_bytes())
    again = FakeClassifier()
    assert process_batch([_msg(later, 3)], settings, sessions, again, move_files=False) == {"classified": 1}
    assert again.seen == ["later.jpg"]


def test_without_dedupe_every_copy_is_classified_on_its_own(sqlite_url, settings):
    sessions = _sessions(sqlite_url)
    files = _photos(settings, 1, twins=1)
    fake = FakeClassifier()
    counts = process_batch([_msg(p, i) for i, p in enumerate(files)], settings, sessions, fake,
                           move_files=False, dedupe=False)
    assert counts == {"classified": 2} and sorted(fake.seen) == ["g0.jpg", "twin0.jpg"]
    assert all(r.duplicate_of is None for r in _rows(sessions).values())


def test_a_row_another_worker_committed_meanwhile_wins(db_url, settings):
    """Another worker records the same bytes while this one classifies: this one's row becomes a
    copy of that row, with that row's verdict."""
    sessions = _sessions(db_url)
    mine, theirs = _photos(settings, 1, twins=1)

    def other_worker() -> None:
        process_batch([_msg(theirs, 2)], settings, sessions, FakeClassifier("v-theirs"), move_files=False)

    counts = process_batch([_msg(mine, 1)], settings, sessions, FakeClassifier("v-mine", during=other_worker),
                           move_files=False)
    assert counts == {"classified": 1}
    rows = _rows(sessions)
    assert rows[theirs.name].duplicate_of is None
    assert rows[mine.name].duplicate_of == rows[theirs.name].id
    assert rows[mine.name].model_version == "v-theirs"


def test_same_bytes_in_two_concurrent_batches_are_classified_once(db_url, settings):
    sessions = _sessions(db_url)
    original, twin = _photos(settings, 1, twins=1)
    errors = []
    overlap = threading.Barrier(2, timeout=30)  # both batches classify at once, or the test fails

    def worker(path, i, name):
        try:
            process_batch([_msg(path, i)], settings, sessions, FakeClassifier(name, during=overlap.wait),
                          move_files=False)
        except threading.BrokenBarrierError:
            errors.append("the two batches never classified at the same time")
        except Exception as exc:  # SQLite may refuse the loser's write: Celery retries it
            errors.append(exc)
            process_batch([_msg(path, i)], settings, sessions, FakeClassifier(name), move_files=False)

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


def test_files_not_decoded_in_time_are_handed_back_with_their_copies(sqlite_url, settings):
    sessions = _sessions(sqlite_url)
    done, slow = _photos(settings, 2)
    copy = settings.inbox_dir / "slow-copy.jpg"
    copy.write_bytes(slow.read_bytes())
    fake = FakeClassifier(outcomes={slow.name: Prediction(str(slow), unstarted=True)})
    msgs = [_msg(p, i) for i, p in enumerate([done, slow, copy])]
    sink: list[dict] = []
    counts = process_batch(msgs, settings, sessions, fake, move_files=False, retry_sink=sink)
    assert counts == {"classified": 1, "requeued": 2}
    assert [(m["event_id"], m["path"], m["attempts"]) for m in sink] == [  # as they came: no attempt counted
        (m["event_id"], m["path"], 0) for m in msgs[1:]]
    assert set(_rows(sessions)) == {done.name}


def test_files_not_decoded_in_time_fail_when_they_cannot_be_handed_back(sqlite_url, settings):
    sessions = _sessions(sqlite_url)
    done, slow = _photos(settings, 2)
    copy = settings.inbox_dir / "slow-copy.jpg"
    copy.write_bytes(slow.read_bytes())
    fake = FakeClassifier(outcomes={slow.name: Prediction(str(slow), unstarted=True)})
    counts = process_batch([_msg(p, i) for i, p in enumerate([done, slow, copy])], settings, sessions, fake,
                           move_files=False)
    assert counts == {"classified": 1, "failed": 2}
    rows = _rows(sessions)
    for name in (slow.name, copy.name):
        assert rows[name].error.startswith("not decoded: the batch's time limit")
        assert rows[name].duplicate_of is None


def test_the_worker_refuses_in_the_watchers_words_before_the_model(sqlite_url, settings, tmp_path):
    sessions = _sessions(sqlite_url)
    inbox = settings.inbox_dir
    good = _photos(settings, 1)[0]
    text = inbox / "text.jpg"
    text.write_text("not an image")
    linked = inbox / "linked.jpg"
    linked.symlink_to(write_image(tmp_path / "outside.jpg", face_like("sad", 9)))
    notes = inbox / "notes.txt"
    notes.write_text("a note")
    hidden = write_image(inbox / ".hidden.jpg", face_like("sad", 3))
    fake = FakeClassifier()
    msgs = [_msg(p, i) for i, p in enumerate([good, text, linked, notes, hidden, inbox / "gone.jpg"])]
    counts = process_batch(msgs, settings, sessions, fake, move_files=False)
    assert counts == {"classified": 1, "rejected": 2, "failed": 3} and fake.seen == [good.name]
    rows = _rows(sessions)
    assert rows["text.jpg"].status == "rejected" and "no image signature" in rows["text.jpg"].error
    assert rows["linked.jpg"].status == "rejected" and rows["linked.jpg"].error == LINK
    assert rows["notes.txt"].error == ("refused: file type '.txt' is not accepted: the extension must be "
                                       "jpg, jpeg, png or bmp")
    assert rows[".hidden.jpg"].status == "failed" and "hidden" in rows[".hidden.jpg"].error
    assert rows["gone.jpg"].status == "failed"
    assert "not found or unreadable on this worker" in rows["gone.jpg"].error


def test_files_are_moved_not_deleted(sqlite_url, settings):
    sessions = _sessions(sqlite_url)
    ok = _photos(settings, 1)[0]
    bad = settings.inbox_dir / "bad.jpg"
    bad.write_text("text")
    process_batch([_msg(ok, 1), _msg(bad, 2)], settings, sessions, FakeClassifier())
    rows = _rows(sessions)
    moved_ok = rows[ok.name].stored_path
    assert Path(moved_ok).parent == settings.processed_dir / "happy"
    assert os.path.isfile(moved_ok) and not ok.exists()
    assert rows["bad.jpg"].stored_path == str(settings.rejected_dir / "bad.jpg")
    assert (settings.rejected_dir / "bad.jpg").read_text() == "text"


def test_unreachable_file_is_handed_back_then_fails_with_a_row(sqlite_url, settings):
    sessions = _sessions(sqlite_url)
    ok = _photos(settings, 1)[0]
    msgs = [_msg(ok, 1), _msg(settings.inbox_dir / "on-another-mount.jpg", 2)]
    sink: list = []
    counts = process_batch(msgs, settings, sessions, FakeClassifier(), move_files=False, retry_sink=sink)
    assert counts == {"classified": 1, "retried": 1} and sink[0]["attempts"] == 1
    # Handed on until the last attempt, which records the failure with its reason.
    for attempt in range(2, UNREACHABLE_ATTEMPTS + 1):
        msgs, sink = sink, []
        counts = process_batch(msgs, settings, sessions, FakeClassifier(), move_files=False, retry_sink=sink)
        if attempt < UNREACHABLE_ATTEMPTS:
            assert sink and sink[0]["attempts"] == attempt
    assert not sink and counts == {"failed": 1}
    row = _rows(sessions)["on-another-mount.jpg"]
    assert row.status == "failed" and "not found or unreadable on this worker" in row.error
    assert f"tried by {UNREACHABLE_ATTEMPTS} worker runs" in row.error


class Crash(BaseException):
    """Stands for the process dying at that point (nothing after it runs)."""


def _one_photo_batch(settings, sqlite_url, name="crash.jpg"):
    sessions = _sessions(sqlite_url)
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
    with pytest.raises(Crash):
        process_batch(msgs, settings, sessions, FakeClassifier())
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
            process_batch(msgs, settings, sessions, FakeClassifier())
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
        process_batch(msgs, settings, sessions, FakeClassifier())
    assert photo.exists() and _the_row(sessions).stored_path == str(photo)
    assert any("could not move" in r.getMessage() and "Operation not permitted" in r.getMessage()
               for r in caplog.records)


def test_process_batch_with_a_fake_classifier_never_imports_tensorflow(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from datetime import UTC, datetime
        from pathlib import Path

        from db.engine import make_engine, make_sessionmaker
        from db.migrate import upgrade
        from moodwatch.settings import Settings
        from tests.imagegen import face_like, write_image
        from tests.test_processing_fake import FakeClassifier
        from worker.processing import process_batch

        url = "sqlite:///{tmp_path / 'r.db'}"
        upgrade(url)
        settings = Settings(data_dir=Path({str(tmp_path / 'data')!r}),
                            model_dir=Path({str(tmp_path / 'no-models')!r}))
        photo = write_image(settings.inbox_dir / "a.jpg", face_like("happy", 1))
        msg = {{"event_id": "a" * 40, "path": str(photo), "received_at": datetime.now(UTC).isoformat()}}
        counts = process_batch([msg], settings, make_sessionmaker(make_engine(url)), FakeClassifier())
        assert counts == {{"classified": 1}}, counts
        print("tensorflow" in sys.modules, "keras" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "False"]
