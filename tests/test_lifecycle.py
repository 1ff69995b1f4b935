"""`moodwatch run`'s life: its children die with it, one service per data folder, and the
embedded broker it owns comes back when killed. Real processes throughout (each test loads
TensorFlow in a worker, so the checks are grouped into two tests)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.imagegen import face_like, write_image
from tests.procs import ROOT, Rows, free_port, kill_pids, redis_servers_in, service_env, stop, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    env = service_env(data_dir=data, model_dir=tiny_model_dir, settle_seconds="0.5",
                      batch_wait="0.3", rescan_seconds="5", web_port=str(free_port()))
    env.pop("MOODWATCH_BROKER_URL", None)
    env.pop("MOODWATCH_DATABASE_URL", None)
    return data, env


def start_service(env: dict[str, str], log: Path, *flags: str) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "run", *flags], env=env,
                            stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moodwatch_app.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def alive(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False


def drop_and_wait(data: Path, rows: Rows, name: str, expected: int, log: Path) -> None:
    write_image(data / "inbox" / name, face_like("happy", expected))
    wait_for(lambda: rows.count() >= expected, 180, f"a row for {name}", log)


def web_up(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_killed_broker_comes_back_and_a_second_service_is_refused(stack, tmp_path):
    from moodwatch.home import read_record

    data, env = stack
    log = tmp_path / "run.log"
    rows = Rows(f"sqlite:///{data / 'moodwatch.db'}")
    proc = start_service(env, log, "--no-web")
    try:
        wait_for(lambda: (data / "inbox").is_dir(), 60, "inbox", log)
        drop_and_wait(data, rows, "before.jpg", 1, log)

        # A second run, watcher or beat on the same data folder: one error line naming the run.
        for command in (["run", "--no-web"], ["watch"], ["beat"]):
            out = cli(env, *command)
            lines = out.stderr.strip().splitlines()
            assert out.returncode == 1 and len(lines) == 1, (command, out.stderr[-2000:])
            assert lines[0].startswith("error: moodwatch run (pid ") and \
                f"(pid {proc.pid})" in lines[0], (command, lines)
        assert read_record().pid == proc.pid, "a refused run overwrote the service record"

        [first] = redis_servers_in(data / ".redis")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: redis_servers_in(data / ".redis") not in ([], [first]), 30,
                 "the embedded Redis to be started again", log)
        drop_and_wait(data, rows, "after.jpg", 2, log)  # the children reconnected
        status = json.loads(cli(env, "status", "--json").stdout)
        assert not str(status.get("broker", "")).startswith("not running"), status

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=110) == 0
    finally:
        stop(proc)
        rows.close()
        kill_pids(redis_servers_in(data / ".redis"))
    text = log.read_text(errors="replace")
    assert text.count("embedded Redis had stopped; started it again") == 1, text[-3000:]
    assert "did not stop in" not in text, text[-3000:]  # nobody needed killing at the end
    assert text.count("embedded Redis stopped") == 1 and redis_servers_in(data / ".redis") == []


def test_kill_9_leaves_no_child_and_the_next_run_joins_its_broker(stack, tmp_path):
    data, env = stack
    port = env["MOODWATCH_WEB_PORT"]
    log = tmp_path / "run.log"
    rows = Rows(f"sqlite:///{data / 'moodwatch.db'}")
    proc = start_service(env, log)
    children: list[psutil.Process] = []
    try:
        wait_for(lambda: (data / "inbox").is_dir(), 60, "inbox", log)
        drop_and_wait(data, rows, "first.jpg", 1, log)
        wait_for(lambda: web_up(port), 60, "the review page", log)
        # worker, its pool processes, watcher, beat, web
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 5, [c.cmdline() for c in children]
        broker = redis_servers_in(data / ".redis")
        assert len(broker) == 1

        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: not any(alive(c) for c in children), 120,
                 "every child of the killed run to exit", log)
        # The broker outlived them (their clean stop still reached the queue); the next run joins it.
        assert redis_servers_in(data / ".redis") == broker

        proc = start_service(env, log)
        drop_and_wait(data, rows, "second.jpg", 2, log)
        wait_for(lambda: web_up(port), 60, "the review page on the same port", log)
        assert redis_servers_in(data / ".redis") == broker, "a second embedded Redis was started"
        children = psutil.Process(proc.pid).children(recursive=True)

        os.kill(proc.pid, signal.SIGHUP)  # a closed terminal
        assert proc.wait(timeout=150) == 0
        wait_for(lambda: not any(alive(c) for c in children), 30, "the children's clean stop", log)
    finally:
        stop(proc)
        rows.close()
        kill_pids([c.pid for c in children if alive(c)] + redis_servers_in(data / ".redis"))
    text = log.read_text(errors="replace")
    assert "address already in use" not in text.lower(), text[-3000:]
    assert "embedded Redis stopped" in text and redis_servers_in(data / ".redis") == []
