"""Shared fixtures: generated data, a tiny trained model, and the real servers.

Real-server fixtures skip with a reason when the server is not there, except under CI=true,
where a missing server fails the test: CI must never pass by skipping the real thing.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from moodwatch.settings import Settings  # noqa: E402
from tests.imagegen import make_curated  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"
# The machine's servers; the ports can be pointed elsewhere (the skip policy's own test does).
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("MOODWATCH_TEST_REDIS_PORT", "6379"))
PG_HOST, PG_PORT = "127.0.0.1", int(os.environ.get("MOODWATCH_TEST_PG_PORT", "5432"))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"real {name} not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A model registry with one small model trained on generated images (1 epoch)."""
    from trainer.training import TrainOptions, train

    root = tmp_path_factory.mktemp("tiny-model")
    data = make_curated(root / "data", per_class=12)
    settings = Settings(data_dir=data, model_dir=root / "models")
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


_redis_db_counter = iter(range(1, 16))


@pytest.fixture
def redis_url():
    """A Redis database number of the machine's server for this test, flushed before and after."""
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    try:
        db = next(_redis_db_counter)
    except StopIteration:
        pytest.fail("out of Redis database numbers")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    client.flushdb()
    client.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("pg_url")
