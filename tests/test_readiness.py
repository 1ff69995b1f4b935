"""Honest readiness: `moodwatch run` says "loading the model" first and "running" only when its
worker has the model loaded and warmed up; `moodwatch status` and the page's status strip say
which (the workers' heartbeats in the broker's Redis, moodwatch.heartbeat)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from moodwatch import heartbeat
from moodwatch.heartbeat import LOADING, READY, UNAVAILABLE, Beat
from tests.imagegen import face_like, write_image
from tests.procs import ROOT, Rows, free_port, kill_pids, redis_servers_in, service_env, stop, wait_for

BANNER = "moodwatch is running"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moodwatch_app.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def status_json(env: dict[str, str]) -> dict:
    out = cli(env, "status", "--json")
    assert out.stdout.strip(), out.stderr[-2000:]
    return json.loads(out.stdout)


def test_heartbeats_are_read_back_described_and_expire(redis_url):
    client = redis.Redis.from_url(redis_url)
    now = time.time()
    heartbeat.write(client, Beat("hostA", 11, 10, READY, model="v1", at=now - 3))
    heartbeat.write(client, Beat("hostA", 12, 10, LOADING, at=now - 1))
    heartbeat.write(client, Beat("hostB", 21, 20, UNAVAILABLE, problem="no current model", at=now))
    client.set(heartbeat.PREFIX + "junk:1", b"not json", ex=5)  # skipped, not fatal
    beats = heartbeat.read_all(client)
    assert {(b.host, b.pid, b.state) for b in beats} == {
        ("hostA", 11, READY), ("hostA", 12, LOADING), ("hostB", 21, UNAVAILABLE)}
    line = heartbeat.describe(beats, now=now)
    # One worker (hostA, pid 10) is ready though one of its processes still loads: it takes jobs.
    assert "ready (model v1) on host hostA, pid 10, last heartbeat 1 s ago" in line, line
    assert "cannot serve on host hostB, pid 20: no current model; last heartbeat 0 s ago" in line, line
    assert heartbeat.overall(beats) == READY
    assert heartbeat.overall([b for b in beats if b.host == "hostB"]) == UNAVAILABLE
    assert heartbeat.describe([]).startswith("no worker") and heartbeat.overall([]) == "none"

    heartbeat.write(client, Beat("hostC", 31, 30, READY, model="v2", at=now), expiry=1)
    assert any(b.host == "hostC" for b in heartbeat.read_all(client))
    time.sleep(1.5)  # Redis expires the key: a worker that died silently drops out
    assert not any(b.host == "hostC" for b in heartbeat.read_all(client))
    client.close()


def test_status_with_no_worker_says_so(tmp_path, redis_url):
    # A broker with nobody serving it: the status says there is no worker, not "ready".
    env = service_env(data_dir=tmp_path / "data", model_dir=tmp_path / "models", broker_url=redis_url)
    status = status_json(env)
    assert status["worker_state"] == "none" and status["worker"].startswith("no worker"), status
    text = cli(env, "status").stdout
    assert "worker: no worker (none has sent a heartbeat" in text, text

    # No broker at all (the embedded Redis is not running): said too, and none is started.
    env.pop("MOODWATCH_BROKER_URL")
    status = status_json(env)
    assert status["worker"] == "no worker (no broker running)" and status["worker_state"] == "none"
    assert redis_servers_in(tmp_path / "data" / ".redis") == []


def install_model(source: Path, target: Path) -> str:
    """Copy a registry into target, its `current` pointer last (as a trained version appears)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "current":
            copy = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, target / entry.name)
    name = (source / "current").read_text().strip()
    (target / "current.tmp").write_text(name + "\n")
    os.replace(target / "current.tmp", target / "current")
    return name


def strip_of(port: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            html = r.read().decode()
    except OSError:
        return ""
    found = re.search(r'<div class="status" id="status">(.*?)</div>', html, re.S)
    return found.group(1) if found else ""


@pytest.mark.slow
def test_run_says_running_only_once_the_worker_has_its_model(tmp_path, tiny_model_dir):
    data, models = tmp_path / "data", tmp_path / "models"
    port = str(free_port())
    # No model at first: the worker cannot be ready, whatever the time it is given.
    env = service_env(data_dir=data, model_dir=models, local_model_dir=models, settle_seconds="0.5",
                      batch_wait="0.3", web_port=port)
    env.pop("MOODWATCH_BROKER_URL", None)
    env.pop("MOODWATCH_DATABASE_URL", None)
    log = tmp_path / "run.log"

    def text() -> str:
        return log.read_text(errors="replace")

    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "run", "--no-beat"], env=env,
                                stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    rows = Rows(f"sqlite:///{data / 'moodwatch.db'}")
    try:
        wait_for(lambda: "not ready: no current model" in text(), 120, "the reason it is not ready", log)
        assert "loading the model" in text() and BANNER not in text(), text()[-3000:]
        worker_pid = int(re.search(r"started worker \(pid (\d+)\)", text()).group(1))
        status = status_json(env)
        assert status["worker_state"] == "unavailable", status
        assert f"cannot serve on host {heartbeat.this_host()}, pid {worker_pid}: no current model" \
            in status["worker"], status
        wait_for(lambda: "worker: <b>cannot serve</b>" in strip_of(port), 60, "the strip's word", log)

        version = install_model(tiny_model_dir, models)
        wait_for(lambda: BANNER in text(), 180, "the banner once the model is there", log)
        out = text()
        # In order: loading, the worker's own word that the model is warm, then the banner.
        assert out.index("loading the model") < out.index("loaded and warmed up") < out.index(BANNER)
        assert f"{BANNER} (model {version}). Drop photos into {data / 'inbox'}" in out, out[-3000:]
        assert out.count(BANNER) == 1

        status = status_json(env)
        assert status["worker_state"] == "ready", status
        assert re.fullmatch(rf"ready \(model {version}\) on host {re.escape(heartbeat.this_host())}, "
                            rf"pid {worker_pid}, last heartbeat \d+ s ago", status["worker"]), status
        assert f"worker: ready (model {version})" in cli(env, "status").stdout
        wait_for(lambda: "worker: <b>ready</b>" in strip_of(port), 60, "the strip to say ready", log)
        assert version in strip_of(port)  # the whole line is the word's title

        # Ready means ready: a photo dropped now gets its row.
        write_image(data / "inbox" / "now.jpg", face_like("happy", 1))
        wait_for(lambda: rows.count() >= 1, 120, "a row for the photo dropped after the banner", log)

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        stop(proc)
        rows.close()
        kill_pids(redis_servers_in(data / ".redis"))
    # The stopped worker's processes removed their records; the broker went with the service.
    assert status_json(env)["worker_state"] == "none"
