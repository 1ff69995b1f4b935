"""The watcher's decisions, with a recording sender and a real SQLite database."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import Result
from moodwatch.filters import is_ignored
from moodwatch.settings import Settings
from tests.imagegen import encode, face_like, write_image
from watcher.service import Watcher, submit_paths


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


def test_accepts_rejects_and_records(tmp_path):
    settings, sessions, rec, w = _setup(tmp_path)
    inbox = settings.inbox_dir
    good = write_image(inbox / "a b ü.JPG", face_like("happy", 1))
    nested = write_image(inbox / "x" / "y" / "n.png", face_like("sad", 2))
    text = inbox / "t.jpg"
    text.write_text("hello")
    gif = inbox / "g.gif"
    gif.write_bytes(b"GIF89a" + b"\0" * 20)
    outside = write_image(tmp_path / "secret.jpg", face_like("sad", 3))
    link = inbox / "link.jpg"
    link.symlink_to(outside)
    (inbox / "partial.jpg.part").write_bytes(b"\xff\xd8\xff")
    w.start()
    try:
        _run_until(w, lambda: len(rec.paths) == 2 and not w._rejects and len(w.tracker) == 0)
    finally:
        w.stop()
    assert sorted(rec.paths) == sorted([str(good), str(nested)])
    with sessions() as s:
        rows = {r.file_name: r for r in s.scalars(select(Result))}
    assert set(rows) == {"t.jpg", "g.gif", "link.jpg"}
    assert all(r.status == "rejected" for r in rows.values())
    assert "symbolic link" in rows["link.jpg"].error
    assert "not accepted" in rows["g.gif"].error
    # Rejected files moved, nothing deleted; the link's target untouched and never moved.
    assert (settings.rejected_dir / "t.jpg").read_text() == "hello"
    assert (settings.rejected_dir / "link.jpg").is_symlink() and outside.exists()
    assert (inbox / "partial.jpg.part").exists()


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
            assert not rec.paths and not w._rejects, "handed on before the copy finished"
            time.sleep(0.05)
        _run_until(w, lambda: len(rec.paths) == 1)
    finally:
        w.stop()
    assert rec.batches[0][0]["sha256"] is not None
    with sessions() as s:
        assert not list(s.scalars(select(Result)))  # no rejection for a half-written file


def test_rescan_and_restart_do_not_enqueue_twice(tmp_path):
    settings, sessions, rec, w = _setup(tmp_path)
    files = [write_image(settings.inbox_dir / f"f{i}.jpg", face_like("sad", i)) for i in range(5)]
    w.start()
    _run_until(w, lambda: len(rec.paths) == 5)
    w.rescan()
    for _ in range(10):
        w.step()
        time.sleep(0.05)
    w.stop()
    assert len(rec.paths) == 5
    # After a restart the files are still in the inbox (not yet processed): they are sent again
    # with the same event ids, so the worker's idempotent insert records each once.
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
    assert not rec.batches and len(w._pending) == 4
    rec.down = False
    _run_until(w, lambda: len(rec.paths) == 4, timeout=15)
    w.stop()


def test_a_sender_bug_is_an_error_with_its_traceback_not_an_outage(tmp_path, caplog):
    """Only a broker that cannot be reached is "broker unreachable"; any other exception from the
    sender is a bug, logged as an error with its traceback. The files are kept either way."""
    settings, sessions, rec, w = _setup(tmp_path)

    def buggy(messages):
        raise TypeError("send_task() got an unexpected keyword argument 'retry_polcy'")

    w.send = buggy
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
    assert len(w._pending) == 1


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


def test_submit_outside_inbox_leaves_files_in_place(tmp_path):
    settings, sessions, rec, _ = _setup(tmp_path)
    folder = tmp_path / "share"
    ok = write_image(folder / "ok.jpg", face_like("happy", 1))
    bad = folder / "sub" / "bad.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"nope")
    results = submit_paths([folder], settings, rec, sessions)
    assert {Path(c.path).name: bool(c.rejected) for c in results} == {"ok.jpg": False, "bad.png": True}
    assert rec.paths == [str(ok)]
    assert bad.exists() and ok.exists()
    with sessions() as s:
        assert [r.file_name for r in s.scalars(select(Result))] == ["bad.png"]


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

    from watcher.service import InotifyLimitError

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
    assert len(w._handled) == 3
    files[0].rename(tmp_path / "moved-away.jpg")  # as the worker does after classifying
    w.rescan()
    w.stop()
    assert sorted(h.path for h in w._handled.values()) == sorted(str(p) for p in files[1:])


def test_names_that_are_not_utf8_get_one_row_each_and_the_watcher_survives(tmp_path):
    import os

    settings, sessions, rec, w = _setup(tmp_path)
    inbox = os.fsencode(settings.inbox_dir)
    photo = os.fsdecode(inbox + b"/caf\xe9.jpg")  # Latin-1 bytes: not valid UTF-8
    text = os.fsdecode(inbox + b"/bad\xff\xfe name.jpg")
    write_image(Path(photo), face_like("happy", 1))
    Path(text).write_text("not an image")
    plain = write_image(settings.inbox_dir / "plain.jpg", face_like("sad", 2))
    w.start()
    try:
        _run_until(w, lambda: len(rec.paths) == 2 and not w._rejects and len(w.tracker) == 0)
        w.rescan()  # the start-up rescan finds them again: no crash, nothing sent twice
        for _ in range(8):
            w.step()
            time.sleep(0.05)
    finally:
        w.stop()
    assert sorted(rec.paths) == sorted([photo, str(plain)])
    with sessions() as s:
        rows = list(s.scalars(select(Result)))
    assert len(rows) == 1
    row = rows[0]
    assert row.status == "rejected" and row.file_name == "bad\\xff\\xfe name.jpg"
    assert row.path_bytes == os.fsencode(text)  # the raw name is recoverable exactly
    # Moved under a name that is valid text, so the row can point at it; bytes kept.
    assert row.stored_path == str(settings.rejected_dir / "bad\\xff\\xfe name.jpg")
    assert Path(row.stored_path).read_text() == "not an image"
