"""The embedded Redis: a read-only command starts none; whoever starts one stops it, cleanly."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from tests.imagegen import face_like, write_image
from tests.procs import ROOT, kill_pids, redis_servers_in, service_env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moodwatch_app.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _embedded_env(tmp_path, tiny_model_dir) -> dict[str, str]:
    env = service_env(data_dir=tmp_path / "data", model_dir=tiny_model_dir)
    env.pop("MOODWATCH_BROKER_URL", None)
    env.pop("MOODWATCH_DATABASE_URL", None)
    return env


def test_status_with_the_service_down_starts_no_broker(tmp_path, tiny_model_dir):
    env = _embedded_env(tmp_path, tiny_model_dir)
    redis_dir = tmp_path / "data" / ".redis"
    assert _cli(env, "db", "upgrade").returncode == 0  # status fails on a missing database
    out = _cli(env, "status", "--json")
    leaked = redis_servers_in(redis_dir)
    kill_pids(leaked)
    assert out.returncode == 0, out.stderr
    assert leaked == [], "status left an embedded redis-server running"
    status = json.loads(out.stdout)
    assert status["broker"].startswith("not running") and status["workers_alive"] == 0


def test_submit_that_starts_the_embedded_redis_stops_it_cleanly_and_keeps_the_job(tmp_path, tiny_model_dir):
    from moodwatch.broker import start_embedded, stop_embedded

    env = _embedded_env(tmp_path, tiny_model_dir)
    redis_dir = tmp_path / "data" / ".redis"
    photo = write_image(tmp_path / "share" / "p.jpg", face_like("happy", 1))
    out = _cli(env, "submit", str(photo))
    leaked = redis_servers_in(redis_dir)
    kill_pids(leaked)
    assert out.returncode == 0 and "queued" in out.stdout, out.stderr
    assert leaked == [], "submit left the embedded redis-server it started running"
    assert "shutdown failed" not in out.stderr and "sigterm" not in out.stderr.lower(), out.stderr
    # The job was kept on disk: the next start of the embedded Redis has it.
    client = start_embedded(redis_dir / "redis.db")
    try:
        assert client.llen("classify") == 1
    finally:
        stop_embedded()
    assert redis_servers_in(redis_dir) == []


def test_stop_embedded_is_a_clean_shutdown(tmp_path, caplog):
    from moodwatch.broker import running_embedded_url, start_embedded, stop_embedded

    db = tmp_path / "redis" / "redis.db"
    client = start_embedded(db)
    client.rpush("classify", "job")
    assert running_embedded_url(db) is not None
    with caplog.at_level(logging.INFO):
        assert stop_embedded()
    assert "shutdown failed" not in caplog.text.lower()
    assert running_embedded_url(db) is None and redis_servers_in(db.parent) == []
    again = start_embedded(db)
    try:
        assert again.lrange("classify", 0, -1) == [b"job"]  # nothing lost by the clean stop
    finally:
        stop_embedded()
