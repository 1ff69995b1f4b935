"""Moves out of the inbox that no single file can block, that leave no junk on a full disk, and
the watcher's own rejections (hashed, recorded once) and the folders its moves empty."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import subprocess
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import Result
from moodwatch.files import name_max, unique_destination
from moodwatch.outcome import Outcome
from moodwatch.outcome_moves import move_outcomes
from moodwatch.settings import Settings
from moodwatch.vocab import Status
from tests.conftest import missing
from tests.imagegen import face_like, write_image
from tests.test_watcher_unit import _run_until
from watcher.service import Watcher


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models", settle_seconds=0.3,
                    batch_wait=0.1, **kw)


def _watcher(tmp_path: Path, sessions=None, **kw) -> tuple[Settings, object, Watcher]:
    settings = _settings(tmp_path, **kw)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    sessions = sessions or make_sessionmaker(make_engine(url))
    settings.inbox_dir.mkdir(parents=True)
    return settings, sessions, Watcher(settings, lambda batch: None, sessions)




def _rows(sessions) -> dict[str, Result]:
    with sessions() as s:
        return {r.event_id: r for r in s.scalars(select(Result))}


class Rows:
    """The stored_path column of some rows, as move_outcomes records it."""

    def __init__(self, rows: list[Outcome]):
        self.where = {r.event_id: r.stored_path for r in rows}

    def __call__(self, where: dict[str, str]) -> None:
        self.where.update(where)


def _row(path: Path, label: str = "happy", n: int = 0) -> Outcome:
    return Outcome.new(f"{n:040x}", str(path), datetime.now(UTC), status="classified", label=label)


# 5. names too long for the destination -------------------------------------------------------

def test_names_that_would_not_fit_are_shortened_keeping_extension_and_distinct(tmp_path):
    folder = tmp_path / "out"
    limit = 255
    long = "p" * 249 + ".jpeg"  # 254 bytes: legal, but not with "-1" added
    first = unique_destination(folder, long)
    assert first.name == long
    first.write_bytes(b"1")
    second = unique_destination(folder, long)
    second.write_bytes(b"2")
    third = unique_destination(folder, long)
    raw = os.fsdecode(b"\xff" * 150 + b".png")  # escaped to 604 characters as a printable name
    escaped = unique_destination(folder, raw)
    multibyte = unique_destination(folder, "ü" * 127 + "x.jpg")  # 2 bytes a character
    for p in (second, third, escaped, multibyte):
        assert len(os.fsencode(p.name)) <= limit, p.name
        p.write_bytes(b"")  # the filesystem takes it
    assert second.suffix == third.suffix == ".jpeg" and escaped.suffix == ".png"
    assert len({first, second, third}) == 3
    assert escaped.name.startswith("\\xff") and multibyte.name.startswith("ü")
    assert name_max(folder) == limit


def test_one_name_too_long_never_blocks_the_others(tmp_path, caplog):
    """The watcher's rejected files: a 254-byte name dropped a second time (the numbered name no
    longer fits) and a name of raw 0xFF bytes move with the rest; before, ENAMETOOLONG aborted
    every move of the batch, at every rescan."""
    settings, sessions, w = _watcher(tmp_path)
    inbox = settings.inbox_dir
    long = "x" * 250 + ".jpg"
    settings.rejected_dir.mkdir(parents=True)
    (settings.rejected_dir / long).write_text("the first one")
    names = [long, os.fsdecode(b"\xff" * 150 + b".jpg")] + [f"plain{i}.jpg" for i in range(10)]
    for name in names:
        (inbox / name).write_text(f"not an image: {len(name)}")
    w.start()
    try:
        _run_until(w, lambda: len(_rows(sessions)) == len(names) and not w.backlog().rejects)
    finally:
        w.stop()
    assert not list(inbox.iterdir())  # every file moved
    rows = _rows(sessions).values()
    for r in rows:
        assert Path(r.stored_path).parent == settings.rejected_dir
        assert Path(r.stored_path).read_text().startswith("not an image")
    assert (settings.rejected_dir / long).read_text() == "the first one"  # nothing overwritten
    assert not [r for r in caplog.records if "could not move" in r.getMessage()]


def test_a_file_whose_move_cannot_be_planned_does_not_stop_the_others(tmp_path, caplog):
    settings = _settings(tmp_path)
    settings.inbox_dir.mkdir(parents=True)
    (settings.processed_dir).mkdir(parents=True)
    (settings.processed_dir / "happy").write_text("a file where the folder should be")
    odd = settings.inbox_dir / "odd.jpg"
    odd.write_bytes(b"odd")
    rows = [_row(odd, "happy", 0)] + [
        _row(settings.inbox_dir / f"s{i}.jpg", "sad", i + 1) for i in range(3)]
    for r in rows[1:]:
        Path(r.path).write_bytes(b"sad")
    recorded = Rows(rows)
    with caplog.at_level(logging.WARNING):
        moved = move_outcomes(rows, settings, recorded)
    assert len(moved) == 3 and all(Path(p).parent == settings.processed_dir / "sad" for p in moved.values())
    assert odd.read_bytes() == b"odd" and recorded.where[rows[0].event_id] == str(odd)
    assert any("could not move" in r.getMessage() and "odd.jpg" in r.getMessage() for r in caplog.records)


# 7. a cross-filesystem move onto a full disk -------------------------------------------------

@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (another filesystem than tmp_path's, and soon full); unmounted after."""
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        missing(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _everything_in(folder: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, n), folder)
                  for r, ds, fs in os.walk(folder) for n in ds + fs)


def test_a_move_onto_a_full_filesystem_leaves_no_junk_and_a_retry_succeeds(tmp_path, tiny_tmpfs, caplog):
    settings = _settings(tmp_path)
    settings.inbox_dir.mkdir(parents=True)
    processed = settings.processed_dir
    processed.parent.mkdir(parents=True, exist_ok=True)
    processed.symlink_to(tiny_tmpfs)  # processed/ on another filesystem
    data = os.urandom(200_000)  # more than the 64 KiB there
    photo = settings.inbox_dir / "big.jpg"
    photo.write_bytes(data)
    small = settings.inbox_dir / "small.jpg"
    small.write_bytes(b"small")
    rows = [_row(photo, "happy", 1), _row(small, "sad", 2)]
    recorded = Rows(rows)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # the rescan retries: each failure must leave nothing behind
            moved = move_outcomes([r for r in rows if os.path.lexists(r.path)], settings, recorded)
            if not moved:
                continue
            assert list(moved) == [rows[1].event_id]  # the small one fits, and moves at once
    assert any("No space left on device" in r.getMessage() for r in caplog.records)
    assert _everything_in(tiny_tmpfs) == ["happy", "sad", "sad/small.jpg"]  # no partial copy
    assert photo.read_bytes() == data and recorded.where[rows[0].event_id] == str(photo)

    subprocess.run(["mount", "-o", "remount,size=1m", str(tiny_tmpfs)], check=True)
    moved = move_outcomes([rows[0]], settings, recorded)
    dest = Path(moved[rows[0].event_id])
    assert dest == processed / "happy" / "big.jpg" and dest.read_bytes() == data
    assert not photo.exists() and recorded.where[rows[0].event_id] == str(dest)
    assert _everything_in(tiny_tmpfs) == ["happy", "happy/big.jpg", "sad", "sad/small.jpg"]


def test_a_cross_filesystem_move_never_overwrites_and_moves_a_link_as_a_link(tmp_path, tiny_tmpfs):
    settings = _settings(tmp_path, move_rejected=True)
    settings.inbox_dir.mkdir(parents=True)
    settings.rejected_dir.parent.mkdir(parents=True, exist_ok=True)
    settings.rejected_dir.symlink_to(tiny_tmpfs)
    (tiny_tmpfs / "same.jpg").write_bytes(b"already there")
    same = settings.inbox_dir / "same.jpg"
    same.write_bytes(b"new")
    target = tmp_path / "target.jpg"
    target.write_bytes(b"target")
    link = settings.inbox_dir / "link.jpg"
    link.symlink_to(target)
    rows = [replace(_row(p, n=i), status=Status.REJECTED, label=None) for i, p in enumerate([same, link])]
    moved = move_outcomes(rows, settings, Rows(rows))
    assert (tiny_tmpfs / "same.jpg").read_bytes() == b"already there"
    assert Path(moved[rows[0].event_id]).read_bytes() == b"new"
    assert os.readlink(moved[rows[1].event_id]) == str(target) and target.read_bytes() == b"target"
    assert not same.exists() and not os.path.lexists(link)
    assert not [n for n in os.listdir(tiny_tmpfs) if n.startswith(".")]  # no temporary left


# 12b, 12c. the watcher's own rejections ------------------------------------------------------

@pytest.fixture(scope="module")
def rejected_rows(tmp_path_factory) -> dict[str, Result]:
    """The rows of five rejections, by file name: a text file, a GIF, an empty file, a link, and
    a file reached through a linked folder leading out of the inbox."""
    tmp_path = tmp_path_factory.mktemp("hashed")
    settings, sessions, w = _watcher(tmp_path)
    inbox = settings.inbox_dir
    (inbox / "t.jpg").write_text("not an image")
    (inbox / "g.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    (inbox / "empty.png").write_bytes(b"")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "s.jpg").write_text("outside the inbox")
    (inbox / "linked").symlink_to(elsewhere)
    (inbox / "link.jpg").symlink_to(elsewhere / "s.jpg")
    for name in ["t.jpg", "g.gif", "empty.png", "link.jpg", "linked/s.jpg"]:
        w.handle(str(inbox / name))  # what the loop does with a settled file
    w.record_rejections()
    return {r.file_name: r for r in _rows(sessions).values()}


def test_each_rejection_gets_its_row(rejected_rows):
    assert len(rejected_rows) == 5 and all(r.status == "rejected" for r in rejected_rows.values())


@pytest.mark.parametrize("name, data", [("t.jpg", b"not an image"), ("g.gif", b"GIF89a" + b"\0" * 20),
                                        ("empty.png", b"")])
def test_a_rejected_file_that_could_be_read_carries_its_sha256(rejected_rows, name, data):
    assert rejected_rows[name].sha256 == hashlib.sha256(data).hexdigest()


def test_a_rejected_link_is_never_followed_to_hash_it(rejected_rows):
    assert rejected_rows["link.jpg"].sha256 is None


def test_a_file_through_a_linked_folder_is_refused_unread(rejected_rows):
    assert "outside the inbox" in rejected_rows["s.jpg"].error and rejected_rows["s.jpg"].sha256 is None


class _Messages(logging.Handler):
    """Every message logged while attached (caplog is per test; this serves a module fixture)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class LockedScene:
    settings: Settings
    sessions: object
    kept_while_locked: int  # rejections the watcher still held after ~2 s of the lock
    messages: list[str]


@pytest.fixture(scope="module")
def locked_rejection(tmp_path_factory) -> LockedScene:
    """A rejection met while another writer holds the database for ~2 s, then let go."""
    tmp_path = tmp_path_factory.mktemp("locked")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    # The real busy timeout is 30 s; a short one lets the test hold the lock through many tries.
    sessions = make_sessionmaker(create_engine(url, connect_args={"timeout": 0.05}))
    settings, sessions, w = _watcher(tmp_path, sessions, rescan_seconds=0.1)
    (settings.inbox_dir / "t.jpg").write_text("not an image")
    lock = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another writer holds the database
    handler = _Messages()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    w.start()
    try:
        deadline = time.monotonic() + 2  # several rescans find the file again meanwhile
        while time.monotonic() < deadline:
            w.step()
            time.sleep(0.05)
        kept = len(w.backlog().rejects)
        lock.execute("ROLLBACK")
        _run_until(w, lambda: not w.backlog().rejects and _rows(sessions))
        for _ in range(5):
            w.step()
            time.sleep(0.05)
    finally:
        w.stop()
        lock.close()
        root.removeHandler(handler)
        root.setLevel(level)
    return LockedScene(settings, sessions, kept, handler.messages)


def test_a_rejection_is_kept_while_the_database_is_locked(locked_rejection):
    assert locked_rejection.kept_while_locked == 1
    assert any("kept for retry" in m for m in locked_rejection.messages)


def test_a_kept_rejection_is_recorded_once(locked_rejection):
    assert len([m for m in locked_rejection.messages if "t.jpg: rejected (" in m]) == 1
    assert len(_rows(locked_rejection.sessions)) == 1


def test_a_kept_rejection_is_moved_once_its_row_is_written(locked_rejection):
    assert not [m for m in locked_rejection.messages if "could not move" in m]
    (row,) = _rows(locked_rejection.sessions).values()
    assert Path(row.stored_path) == locked_rejection.settings.rejected_dir / "t.jpg"
    assert Path(row.stored_path).read_text() == "not an image"


# 12f. folders the moves emptied --------------------------------------------------------------

@dataclass
class EmptiedScene:
    settings: Settings
    kept_while_fresh: bool  # the folder just emptied was still there after the next rescan
    paths: dict[str, Path]


@pytest.fixture(scope="module")
def emptied_folders(tmp_path_factory) -> EmptiedScene:
    """inbox/a/b/ held a rejected file (moved), inbox/a/c/ was empty from the start, inbox/keep/
    holds a hidden file, inbox/fresh/ is made just before the last rescan."""
    tmp_path = tmp_path_factory.mktemp("emptied")
    settings, sessions, w = _watcher(tmp_path)
    inbox = settings.inbox_dir
    paths = {"nested": inbox / "a" / "b", "keep": inbox / "keep", "fresh": inbox / "fresh"}
    paths["nested"].mkdir(parents=True)
    (paths["nested"] / "t.jpg").write_text("not an image")
    (inbox / "a" / "c").mkdir()  # empty from the start: old by the time of the rescan
    paths["keep"].mkdir()
    (paths["keep"] / ".hidden").write_text("a file the watcher ignores, never deleted")
    w.start()
    try:
        _run_until(w, lambda: _rows(sessions) and not w.backlog().rejects)
        assert not (paths["nested"] / "t.jpg").exists()  # moved to rejected/
        w.rescan()  # the folder was emptied just now: not settled yet, it stays
        kept = paths["nested"].is_dir()
        time.sleep(settings.settle_seconds + 0.2)
        paths["fresh"].mkdir()  # a person just made it, to fill it
        w.rescan()
    finally:
        w.stop()
    return EmptiedScene(settings, kept, paths)


def test_a_folder_just_emptied_stays_until_it_has_settled(emptied_folders):
    assert emptied_folders.kept_while_fresh


def test_a_settled_tree_of_emptied_folders_is_removed_at_once(emptied_folders):
    assert not (emptied_folders.settings.inbox_dir / "a").exists()


def test_a_folder_just_made_stays_empty(emptied_folders):
    assert emptied_folders.paths["fresh"].is_dir()


def test_a_folder_with_a_hidden_file_stays_and_so_does_the_file(emptied_folders):
    assert (emptied_folders.paths["keep"] / ".hidden").exists()
    assert sorted(os.listdir(emptied_folders.settings.inbox_dir)) == ["fresh", "keep"]


def test_the_moved_file_keeps_its_folder_under_rejected(emptied_folders):
    assert (emptied_folders.settings.rejected_dir / "a" / "b" / "t.jpg").read_text() == "not an image"


def test_the_empty_inbox_itself_stays(tmp_path):
    settings, _sessions, w = _watcher(tmp_path)
    write_image(settings.inbox_dir / "x" / "p.jpg", face_like("happy", 1)).unlink()
    time.sleep(settings.settle_seconds + 0.2)
    w.rescan()
    assert settings.inbox_dir.is_dir() and not list(settings.inbox_dir.iterdir())
