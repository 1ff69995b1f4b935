"""Without the real servers the suite skips their tests and says why; under CI=true it fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def _run(ci: str, test_file: str = "tests/test_db.py", **extra: str) -> subprocess.CompletedProcess:
    port = str(_closed_port())
    env = dict(os.environ, CI=ci, MOODWATCH_TEST_PG_PORT=port, **extra)
    env.pop("MOODWATCH_TEST_REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           test_file], cwd=ROOT, env=env, capture_output=True, text=True)


def test_missing_server_is_a_skip_with_its_reason_locally():
    out = _run("false")
    assert out.returncode == 0, out.stdout[-2000:]
    assert "skipped" in out.stdout and "real PostgreSQL not reachable" in out.stdout


@pytest.mark.parametrize("ci", ["true", "1"])  # CI systems set either
def test_missing_server_is_a_failure_under_ci(ci):
    out = _run(ci)
    assert out.returncode != 0
    assert "a missing server is a failure, not a skip" in out.stdout


def test_missing_redis_server_binary_is_a_skip_locally_and_a_failure_under_ci(tmp_path):
    nowhere = str(tmp_path / "no-redis-server")
    local = _run("false", "tests/test_redis_isolation.py", MOODWATCH_TEST_REDIS_SERVER=nowhere)
    assert local.returncode == 0 and "no redis-server binary" in local.stdout, local.stdout[-2000:]
    ci = _run("true", "tests/test_redis_isolation.py", MOODWATCH_TEST_REDIS_SERVER=nowhere)
    assert ci.returncode != 0 and "a missing server is a failure" in ci.stdout, ci.stdout[-2000:]
