"""The watcher's decisions, with a recording sender and a real SQLite database."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import Result
from moodwatch.filters import is_ignored
from moodwatch.settings import Settings
from tests.imagegen import encode, face_like, write_image
from watcher.service import Watcher
from watcher.submit import submit_paths


class Recorder:
    def __init__(self):
        self.batches: list[list[dict]] = []
        self.down = False

    def __call__(self, messages):
        if self.down:
            raise ConnectionError("broker down")
        self.batches.append(list(messages))

    @property
    def paths(self) -> list[str]:
        return [m["path"] for b in self.batches for m in b]


def _setup(tmp_path, **kw):
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models", settle_seconds=0.3,
                        batch_wait=0.1, batch_size=kw.pop("batch_size", 32), **kw)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    rec = Recorder()
    w = Watcher(settings, rec, sessions)
    settings.inbox_dir.mkdir(parents=True)
    return settings, sessions, rec, w


def _run_until(w: Watcher, cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w.step()
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met")


def test_ignore_patterns():
    root = Path("/in")
    for name in ["/in/.hidden.jpg", "/in/a.jpg.part", "/in/b.crdownload", "/in/c.jpg~", "/in/.d/x.jpg",
                 "/in/x.tmp"]:
        assert is_ignored(name, root), name
    for name in ["/in/a.jpg", "/in/sub/b.PNG", "/in/ünïcode name.jpeg"]:
        assert not is_ignored(name, root), name


@dataclass
class Scene:
    """One scenario run once; each test below checks one thing it shows."""

    settings: Settings
    sessions: object
    rec: Recorder
    paths: dict[str, Path]

    def rows(self) -> dict[str, Result]:
        with self.sessions() as s:
            return {r.file_name: r for r in s.scalars(select(Result))}


@pytest.fixture(scope="module")
def mixed_inbox(tmp_path_factory) -> Scene:
    """Photos, a nested one, a text file, a GIF, a link out of the inbox and a partial download."""
    tmp_path = tmp_path_factory.mktemp("mixed")
    settings, sessions, rec, w = _setup(tmp_path)
    inbox = settings.inbox_dir
    paths = {"good": write_image(inbox / "a b ü.JPG", face_like("happy", 1)),
             "nested": write_image(inbox / "x" / "y" / "n.png", face_like("sad", 2)),
             "outside": write_image(tmp_path / "secret.jpg", face_like("sad", 3))}
    (inbox / "t.jpg").write_text("hello")
    (inbox / "g.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    (inbox / "link.jpg").symlink_to(paths["outside"])
    (inbox / "partial.jpg.part").write_bytes(b"\xff\xd8\xff")
    w.start()
    try:
        _run_until(w, lambda: len(rec.paths) == 2 and not w.backlog().rejects and w.backlog().settling == 0)
    finally:
        w.stop()
    return Scene(settings, sessions, rec, paths)


def test_accepted_photos_are_sent_nested_ones_too(mixed_inbox):
    assert sorted(mixed_inbox.rec.paths) == sorted([str(mixed_inbox.paths["good"]),
                                                    str(mixed_inbox.paths["nested"])])


def test_each_refused_file_gets_one_rejected_row(mixed_inbox):
    rows = mixed_inbox.rows()
    assert set(rows) == {"t.jpg", "g.gif", "link.jpg"}
    assert all(r.status == "rejected" for r in rows.values())


def test_a_link_is_refused_as_a_link(mixed_inbox):
    assert "symbolic link" in mixed_inbox.rows()["link.jpg"].error


def test_a_format_not_accepted_is_refused_by_name(mixed_inbox):
    assert "not accepted" in mixed_inbox.rows()["g.gif"].error


def test_rejected_files_are_moved_not_deleted(mixed_inbox):
    assert (mixed_inbox.settings.rejected_dir / "t.jpg").read_text() == "hello"


def test_a_rejected_link_moves_as_a_link_and_its_target_stays(mixed_inbox):
    assert (mixed_inbox.settings.rejected_dir / "link.jpg").is_symlink()
    assert mixed_inbox.paths["outside"].exists()


def test_a_partial_download_is_left_alone(mixed_inbox):
    assert (mixed_inbox.settings.inbox_dir / "partial.jpg.part").exists()
    assert "partial.jpg.part" not in mixed_inbox.rows()


def test_slow_writer_is_not_read_half_written(tmp_path):
    settings, sessions, rec, w = _setup(tmp_path)
    data = encode(face_like("happy", 5, 400), ".png")
    path = settings.inbox_dir / "slow.png"

    def write_slowly():
        with open(path, "wb") as fh:
            for i in range(0, len(data), 10_000):
                fh.write(data[i : i + 10_000])
                fh.flush()
                time.sleep(0.1)

    writer = threading.Thread(target=write_slowly)
    w.start()
    writer.start()
    try:
        while writer.is_alive():
            w.step()
            assert not rec.paths and not w.backlog().rejects, "handed on before the copy finished"
            time.sleep(0.05)
        _run_until(w, lambda: len(rec.paths) == 1)
    finally:
        w.stop()
    assert rec.batches[0][0]["sha256"] is not None
    with sessions() as s:
        assert not list(s.scalars(select(Result)))  # no rejection for a half-written file


def _steps(w: Watcher, n: int = 10) -> None:
    for _ in range(n):
        w.step()
        time.sleep(0.05)


def test_a_rescan_does_not_send_a_file_twice(tmp_path):
    settings, sessions, rec, w = _setup(tmp_path)
    for i in range(5):
        write_image(settings.inbox_dir / f"f{i}.jpg", face_like("sad", i))
    w.start()
    try:
        _run_until(w, lambda: len(rec.paths) == 5)
        w.rescan()
        _steps(w)
    finally:
        w.stop()
    assert len(rec.paths) == 5


def test_a_restart_sends_the_same_arrivals_again_each_once(tmp_path):
    """After a restart the files are still in the inbox (not yet processed): they are sent again
    with the same event ids, so the worker's idempotent insert records each once."""
    settings, sessions, rec, w = _setup(tmp_path)
    files = [write_image(settings.inbox_dir / f"f{i}.jpg", face_like("sad", i)) for i in range(5)]
    w.start()
    _run_until(w, lambda: len(rec.paths) == 5)
    w.stop()
    ids = {m["event_id"] for b in rec.batches for m in b}
    w2 = Watcher(settings, rec, sessions)
    w2.start()
    _run_until(w2, lambda: len(rec.paths) == 10)
    w2.stop()
    second = [m["event_id"] for b in rec.batches for m in b][5:]
    assert sorted(second) == sorted(ids) and len(ids) == 5  # the same five arrivals, each once
    assert all(f.exists() for f in files)  # nothing was moved or lost meanwhile


def test_broker_down_keeps_files_and_retries(tmp_path):
    settings, sessions, rec, w = _setup(tmp_path)
    rec.down = True
    w.start()
    for i in range(4):
        write_image(settings.inbox_dir / f"d{i}.jpg", face_like("happy", i))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        w.step()
        time.sleep(0.05)
    assert not rec.batches and len(w.backlog().pending) == 4
    rec.down = False
    _run_until(w, lambda: len(rec.paths) == 4, timeout=15)
    w.stop()


def test_a_sender_bug_is_an_error_with_its_traceback_not_an_outage(tmp_path, caplog):
    """Only a broker that cannot be reached is "broker unreachable"; any other exception from the
    sender is a bug, logged as an error with its traceback. The files are kept either way."""
    settings, sessions, _rec, _w = _setup(tmp_path)

    def buggy(messages):
        raise TypeError("send_task() got an unexpected keyword argument 'retry_polcy'")

    w = Watcher(settings, buggy, sessions)
    w.start()
    write_image(settings.inbox_dir / "a.jpg", face_like("happy", 1))
    with caplog.at_level(logging.INFO, logger="moodwatch.watcher"):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not any(r.levelno >= logging.ERROR for r in caplog.records):
            w.step()
            time.sleep(0.05)
    w.stop()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].exc_info and "retry_polcy" in str(errors[0].exc_info[1])
    assert not any("broker unreachable" in r.getMessage() for r in caplog.records)
    assert len(w.backlog().pending) == 1


def test_database_errors_are_warnings_with_the_cause(tmp_path, caplog):
    """The watcher asks the database what is recorded before it sends; when it cannot, it says so
    at warning level with the cause (it used to log at debug, invisible), and still sends."""
    settings, _sessions, rec, _w = _setup(tmp_path)
    broken = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}"))
    w = Watcher(settings, rec, broken)
    w.start()
    write_image(settings.inbox_dir / "a.jpg", face_like("happy", 1))
    with caplog.at_level(logging.INFO, logger="moodwatch.watcher"):
        _run_until(w, lambda: len(rec.paths) == 1)
    w.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("database unavailable" in m and "no such table: results" in m for m in warnings), warnings


def test_batches_respect_size(tmp_path):
    settings, sessions, rec, w = _setup(tmp_path, batch_size=4)
    for i in range(10):
        write_image(settings.inbox_dir / f"b{i}.jpg", face_like("happy", i))
    w.start()
    _run_until(w, lambda: len(rec.paths) == 10)
    w.stop()
    assert max(len(b) for b in rec.batches) <= 4


@pytest.fixture(scope="module")
def submitted_share(tmp_path_factory) -> tuple[Scene, list]:
    """`submit` of a folder outside the inbox holding a photo and, in a sub-folder, a non-image."""
    tmp_path = tmp_path_factory.mktemp("share")
    settings, sessions, rec, _ = _setup(tmp_path)
    folder = tmp_path / "share"
    paths = {"ok": write_image(folder / "ok.jpg", face_like("happy", 1)), "bad": folder / "sub" / "bad.png"}
    paths["bad"].parent.mkdir(parents=True)
    paths["bad"].write_bytes(b"nope")
    results = submit_paths([folder], settings, rec, sessions)
    return Scene(settings, sessions, rec, paths), results


def test_submit_reports_each_file_accepted_or_refused(submitted_share):
    _scene, results = submitted_share
    assert {Path(c.path).name: bool(c.rejected) for c in results} == {"ok.jpg": False, "bad.png": True}


def test_submit_sends_only_the_accepted_file(submitted_share):
    scene, _results = submitted_share
    assert scene.rec.paths == [str(scene.paths["ok"])]


def test_submit_leaves_files_outside_the_inbox_in_place(submitted_share):
    scene, _results = submitted_share
    assert scene.paths["bad"].exists() and scene.paths["ok"].exists()


def test_submit_records_the_refused_file(submitted_share):
    scene, _results = submitted_share
    assert list(scene.rows()) == ["bad.png"]


def test_polling_observer_sees_files_too(tmp_path):
    settings, sessions, rec, _ = _setup(tmp_path, rescan_seconds=3600)
    w = Watcher(settings, rec, sessions, polling=True)
    w.start()
    try:
        write_image(settings.inbox_dir / "late" / "p.png", face_like("sad", 3))  # after start: no rescan
        _run_until(w, lambda: len(rec.paths) == 1, timeout=15)
    finally:
        w.stop()
    assert rec.paths[0].endswith("late/p.png")


def test_inotify_limit_gives_the_fix(tmp_path, monkeypatch):
    import errno

    import pytest

    from watcher.events import InotifyLimitError

    settings, sessions, rec, w = _setup(tmp_path)

    def refuse(*_a, **_k):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr("watchdog.observers.Observer.start", refuse)
    with pytest.raises(InotifyLimitError, match="max_user_watches.*--polling"):
        w.start()


def test_status_reports_backlog_queue_workers_and_model(tmp_path, tiny_model_dir):
    from moodwatch.broker import embedded_url, start_embedded
    from moodwatch.queue import CLASSIFY_TASK, make_celery
    from moodwatch.status import collect

    client = start_embedded(tmp_path / "redis" / "redis.db")
    try:
        settings = Settings(data_dir=tmp_path / "data", model_dir=tiny_model_dir,
                            broker_url=embedded_url(client))
        for i in range(3):
            write_image(settings.inbox_dir / f"w{i}.jpg", face_like("happy", i))
        app = make_celery(settings)
        app.send_task(CLASSIFY_TASK, args=[[]])
        app.send_task(CLASSIFY_TASK, args=[[]])
        s = collect(settings, ping_timeout=0.5)
        assert s["inbox_backlog"] == 3 and s["queue_length"] == 2 and s["workers_alive"] == 0
        assert s["current_model"] == (tiny_model_dir / "current").read_text().strip()
    finally:
        client.shutdown()


def test_handled_ids_are_pruned_once_files_leave_the_inbox(tmp_path):
    settings, sessions, rec, w = _setup(tmp_path)
    files = [write_image(settings.inbox_dir / f"p{i}.jpg", face_like("sad", i)) for i in range(3)]
    w.start()
    _run_until(w, lambda: len(rec.paths) == 3)
    assert len(w.handled) == 3
    files[0].rename(tmp_path / "moved-away.jpg")  # as the worker does after classifying
    w.rescan()
    w.stop()
    assert sorted(w.handled.paths()) == sorted(str(p) for p in files[1:])


@pytest.fixture(scope="module")
def names_not_utf8(tmp_path_factory) -> Scene:
    """A photo and a text file whose names are not UTF-8, and a plain photo; rescanned after."""
    tmp_path = tmp_path_factory.mktemp("names")
    settings, sessions, rec, w = _setup(tmp_path)
    inbox = os.fsencode(settings.inbox_dir)
    paths = {"photo": Path(os.fsdecode(inbox + b"/caf\xe9.jpg")),  # Latin-1 bytes: not valid UTF-8
             "text": Path(os.fsdecode(inbox + b"/bad\xff\xfe name.jpg")),
             "plain": settings.inbox_dir / "plain.jpg"}
    write_image(paths["photo"], face_like("happy", 1))
    paths["text"].write_text("not an image")
    write_image(paths["plain"], face_like("sad", 2))
    w.start()
    try:
        _run_until(w, lambda: len(rec.paths) == 2 and not w.backlog().rejects and w.backlog().settling == 0)
        w.rescan()  # the start-up rescan finds them again: no crash, nothing sent twice
        _steps(w, 8)
    finally:
        w.stop()
    return Scene(settings, sessions, rec, paths)


def test_photos_with_names_not_utf8_are_sent_once_through_a_rescan(names_not_utf8):
    assert sorted(names_not_utf8.rec.paths) == sorted([str(names_not_utf8.paths["photo"]),
                                                       str(names_not_utf8.paths["plain"])])


def test_a_refused_name_not_utf8_gets_one_row_with_a_printable_name(names_not_utf8):
    (row,) = names_not_utf8.rows().values()
    assert row.status == "rejected" and row.file_name == "bad\\xff\\xfe name.jpg"


def test_the_raw_name_is_recoverable_exactly(names_not_utf8):
    (row,) = names_not_utf8.rows().values()
    assert row.path_bytes == os.fsencode(names_not_utf8.paths["text"])


def test_it_moves_under_a_printable_name_with_its_bytes(names_not_utf8):
    """Moved under a name that is valid text, so the row can point at it; bytes kept."""
    (row,) = names_not_utf8.rows().values()
    assert row.stored_path == str(names_not_utf8.settings.rejected_dir / "bad\\xff\\xfe name.jpg")
    assert Path(row.stored_path).read_text() == "not an image"
