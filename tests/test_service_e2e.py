"""The whole service as a user runs it (`moodwatch run`), on the embedded stack or a Redis the
test starts itself: every dropped file ends with exactly one outcome and stays on disk."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.imagegen import encode, face_like, huge_png_header, write_image
from tests.procs import ROOT, OwnRedis, Rows, redis_servers_in, service_env, stop, wait_for

pytestmark = pytest.mark.slow


def start_service(env: dict[str, str], log: Path, beat: bool = False) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 - the child keeps it
    argv = ["run", "--no-web", *([] if beat else ["--no-beat"])]
    return subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", *argv],
                            env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(*folders: Path) -> list[Path]:
    out = []
    for folder in folders:
        if folder.exists():
            out += [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()]
    return out


def assert_one_row_per_name(rows: Rows, expected: int) -> None:
    time.sleep(2)  # a second row, if any were coming, would show up now
    names = Counter(r.file_name for r in rows.all())
    assert len(names) == expected and set(names.values()) == {1}, names.most_common(3)


@pytest.fixture
def stack(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    env = service_env(data_dir=data, model_dir=tiny_model_dir, settle_seconds="0.5",
                      batch_wait="0.3", rescan_seconds="5")
    env.pop("MOODWATCH_BROKER_URL", None)
    env.pop("MOODWATCH_DATABASE_URL", None)
    return data, env


def test_two_hundred_files_each_get_exactly_one_outcome(stack, tmp_path):
    data, env = stack
    inbox = data / "inbox"
    inbox.mkdir(parents=True)
    log = tmp_path / "run.log"
    expected: dict[str, str] = {}  # file name -> expected status

    def drop_image(rel: str, kind: str, seed: int, size: int = 96) -> Path:
        p = write_image(inbox / rel, face_like(kind, seed, size))
        expected[rel] = "classified"
        return p

    for i in range(160):
        ext = [".jpg", ".png", ".bmp", ".JPG", ".PNG", ".BMP", ".jpeg", ".JPEG"][i % 8]
        drop_image(f"img_{i}{ext}", "happy" if i % 2 else "sad", i)
    for i in range(30):
        drop_image(f"nested/a/b/deep_{i}.jpg", "sad", 1000 + i)
    drop_image("Fête à l'été – sourire ☺.jpg", "happy", 2000)
    drop_image("with  spaces .png", "sad", 2001)
    (inbox / "png_named.jpg").write_bytes(encode(face_like("happy", 2002)))
    expected["png_named.jpg"] = "classified"
    twin_src = drop_image("original.jpg", "happy", 2003)
    shutil.copy(twin_src, inbox / "twin.jpg")
    expected["twin.jpg"] = "classified"
    for name, content in [("zero.jpg", b""), ("text.jpg", b"just some text\n" * 20),
                          ("anim.gif", b"GIF89a" + b"\0" * 64),
                          ("bomb.png", huge_png_header(60_000, 60_000))]:
        (inbox / name).write_bytes(content)
        expected[name] = "rejected"
    jpeg = encode(face_like("sad", 2004, 300), ".jpg")
    (inbox / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    expected["truncated.jpg"] = "rejected"
    outside = write_image(tmp_path / "outside" / "secret.jpg", face_like("sad", 2005))
    outside_sha = sha(outside)
    (inbox / "link.jpg").symlink_to(outside)
    expected["link.jpg"] = "rejected"
    (inbox / ".hidden.jpg").write_bytes(encode(face_like("sad", 1), ".jpg"))  # ignored, stays

    dropped = {p.name: sha(p) for p in inbox.rglob("*") if p.is_file() and not p.is_symlink()
               and p.name != ".hidden.jpg"}
    proc = start_service(env, log)
    rows = Rows(f"sqlite:///{data / 'moodwatch.db'}")
    slow_data = encode(face_like("happy", 2006, 500), ".png")

    def write_slowly():
        with open(inbox / "slow.png", "wb") as fh:
            for i in range(0, len(slow_data), 10_000):
                fh.write(slow_data[i : i + 10_000])
                fh.flush()
                time.sleep(0.1)

    try:
        time.sleep(3)
        writer = threading.Thread(target=write_slowly)
        writer.start()
        writer.join()
        expected["slow.png"] = "classified"
        dropped["slow.png"] = hashlib.sha256(slow_data).hexdigest()
        assert len(expected) >= 200
        wait_for(lambda: rows.count() >= len(expected), 240, f"{len(expected)} rows", log)
        time.sleep(2)  # anything extra would show up now
        found = rows.all()
    finally:
        stop(proc)
        rows.close()

    by_name = Counter(r.file_name for r in found)
    assert sorted(by_name) == sorted(Path(n).name for n in expected)
    assert all(n == 1 for n in by_name.values()), {k: v for k, v in by_name.items() if v > 1}
    status = {r.file_name: r for r in found}
    for rel, want in expected.items():
        r = status[Path(rel).name]
        assert r.status == want, (rel, r.status, r.error)
        if want == "classified":
            assert r.label in ("happy", "sad") and 0.5 <= r.confidence <= 1
        else:
            assert r.error
    assert status["twin.jpg"].duplicate_of == status["original.jpg"].id or \
        status["original.jpg"].duplicate_of == status["twin.jpg"].id
    assert "too large" in status["bomb.png"].error and "symbolic link" in status["link.jpg"].error
    # Every file is still on disk, byte for byte, moved to its outcome folder.
    kept = files_under(data / "processed", data / "rejected")
    assert sorted(sha(p) for p in kept if not p.is_symlink()) == sorted(dropped.values())
    assert (data / "rejected" / "link.jpg").is_symlink()
    assert sha(outside) == outside_sha
    assert (inbox / ".hidden.jpg").exists()
    for r in found:
        assert os.path.lexists(r.stored_path), r.stored_path


def test_files_dropped_while_stopped_are_processed_on_start(stack, tmp_path):
    data, env = stack
    log = tmp_path / "run.log"
    rows = Rows(f"sqlite:///{data / 'moodwatch.db'}")
    proc = start_service(env, log)
    try:
        wait_for(lambda: (data / "inbox").is_dir(), 60, "inbox", log)
        write_image(data / "inbox" / "before.jpg", face_like("happy", 1))
        wait_for(lambda: rows.count() >= 1, 120, "first row", log)
    finally:
        stop(proc)
    for i in range(12):
        write_image(data / "inbox" / f"while_down_{i}.png", face_like("sad", i))
    proc = start_service(env, log)
    try:
        wait_for(lambda: rows.count() >= 13, 120, "rows for files dropped while down", log)
        assert_one_row_per_name(rows, 13)
    finally:
        stop(proc)
        rows.close()
    # Each stop shut the embedded Redis down the way it expects, and left none running.
    text = log.read_text(errors="replace")
    assert text.count("embedded Redis stopped") == 2, text[-3000:]
    assert "shutdown failed" not in text and "sending sigterm" not in text.lower()
    assert redis_servers_in(data / ".redis") == []


def test_broker_outage_during_drops_loses_nothing(stack, tmp_path, redis_binary):
    data, env = stack
    redis = OwnRedis(tmp_path / "own-redis", redis_binary)
    redis.start()
    env["MOODWATCH_BROKER_URL"] = redis.url()
    log = tmp_path / "run.log"
    rows = Rows(f"sqlite:///{data / 'moodwatch.db'}")
    proc = start_service(env, log)
    try:
        wait_for(lambda: (data / "inbox").is_dir(), 60, "inbox", log)
        for i in range(10):
            write_image(data / "inbox" / f"before_{i}.jpg", face_like("happy", i))
        wait_for(lambda: rows.count() >= 10, 120, "rows before the outage", log)
        redis.stop()
        for i in range(15):
            write_image(data / "inbox" / f"during_{i}.jpg", face_like("sad", 100 + i))
        wait_for(lambda: "broker unreachable" in log.read_text(errors="replace"), 60,
                 "the watcher to notice the outage", log)
        time.sleep(3)
        assert rows.count() == 10
        assert proc.poll() is None, "the service must survive a broker outage"
        redis.start()
        wait_for(lambda: rows.count() >= 25, 180, "rows after the broker came back", log)
        assert_one_row_per_name(rows, 25)
    finally:
        stop(proc)
        redis.stop()
        rows.close()


def test_sigterm_during_a_batch_then_restart_gives_one_outcome_each(stack, tmp_path):
    data, env = stack
    env["MOODWATCH_BATCH_SIZE"] = "8"  # the worker's warm shutdown finishes only the jobs it holds
    inbox = data / "inbox"
    for i in range(120):
        write_image(inbox / f"s_{i}.jpg", face_like("happy" if i % 3 else "sad", i, 200))
    # More photos keep arriving until the signal, as in a busy folder: on a fast machine the first
    # 120 can all be done before the signal lands, and then nothing would be cut short.
    signalled = threading.Event()
    fed = []

    def feed():
        while not signalled.is_set():
            n = 120 + len(fed)
            write_image(inbox / f"s_{n}.jpg", face_like("happy" if n % 3 else "sad", n, 200))
            fed.append(n)
            time.sleep(0.02)

    log = tmp_path / "run.log"
    rows = Rows(f"sqlite:///{data / 'moodwatch.db'}")
    proc = start_service(env, log)
    feeder = threading.Thread(target=feed)
    try:
        wait_for(lambda: rows.count() >= 1, 120, "the first rows", log)
        feeder.start()
        wait_for(lambda: rows.count() >= 40, 120, "rows while photos arrive", log)
        os.killpg(proc.pid, signal.SIGTERM)  # Ctrl-C / docker stop, mid-stream
        signalled.set()
        feeder.join()
        total = 120 + len(fed)
        proc.wait(timeout=150)
        before = rows.count()
        proc = start_service(env, log)
        wait_for(lambda: rows.count() >= total, 180, "all rows after restart", log)
        assert_one_row_per_name(rows, total)
        assert all(r.status == "classified" for r in rows.all())
        assert before < total, "the signal landed after every file was done: nothing was cut short"
    finally:
        signalled.set()
        stop(proc)
        rows.close()
    assert len(files_under(data / "processed")) == total
