"""Models published in the database reach a worker that has no model folder (issue 21)."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from db.migrate import open_database, upgrade
from db.models import ModelPublication
from moodwatch.publication import PublicationError, PublishedRegistry, publish_promotion, unpack
from moodwatch.queue import CLASSIFY_TASK, make_celery
from moodwatch.registry import Registry, write_json
from moodwatch.settings import Settings
from tests.imagegen import face_like, write_image
from tests.procs import ROOT, Rows, free_port, service_env, stop, wait_for


def _version(registry: Registry, tag: str, payload: bytes):
    """A version folder as training leaves it: serving files, a plot and TensorBoard logs."""
    version = registry.new_version_dir(tag)
    (version.path / "model.keras").write_bytes(payload)
    write_json(version.path / "params.json", {"architecture": "default"})
    (version.path / "accuracy.png").write_bytes(b"plot")
    (version.path / "tensorboard").mkdir()
    (version.path / "tensorboard" / "events").write_bytes(b"logs")
    return version


@pytest.fixture
def trainer_side(tmp_path, pg_url):
    """The machine with the curated folders: its registry and the shared PostgreSQL."""
    upgrade(pg_url)
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "shipped",
                        local_model_dir=tmp_path / "registry", database_url=pg_url)
    return settings, Registry.for_settings(settings), open_database(pg_url)


def _promote(settings: Settings, registry: Registry, version) -> None:
    """What trainer.training does at a promotion."""
    registry.promote(version)
    publish_promotion(settings, version)


def test_a_promotion_reaches_a_worker_cache(tmp_path, trainer_side):
    settings, registry, sessions = trainer_side
    cache = PublishedRegistry(tmp_path / "worker-cache", sessions, check_every=0)
    first = _version(registry, "a", b"first model")
    _promote(settings, registry, first)

    served = cache.require_current()
    assert served.name == first.name and served.path.parent == tmp_path / "worker-cache"
    assert served.model_path.read_bytes() == b"first model"
    # Only what serving needs travels: no plots, no TensorBoard logs.
    assert sorted(p.name for p in served.path.iterdir()) == ["model.keras", "params.json"]

    second = _version(registry, "b", b"second model")
    _promote(settings, registry, second)
    assert cache.require_current().name == second.name
    assert cache.require_current().model_path.read_bytes() == b"second model"
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".")]  # no half-made folder left


def test_a_tampered_archive_is_refused_logged_and_the_cached_version_serves(tmp_path, trainer_side, caplog):
    settings, registry, sessions = trainer_side
    cache = PublishedRegistry(tmp_path / "worker-cache", sessions, check_every=0)
    good = _version(registry, "good", b"good model")
    _promote(settings, registry, good)
    assert cache.require_current().name == good.name

    bad = _version(registry, "bad", b"bad model")
    _promote(settings, registry, bad)
    with sessions.begin() as session:  # the bytes change in the database, not the recorded hash
        archive = session.get(ModelPublication, bad.name).archive
        session.execute(update(ModelPublication).where(ModelPublication.name == bad.name)
                        .values(archive=archive.replace(b"bad model", b"evil model")))
    with caplog.at_level(logging.ERROR, logger="moodwatch.publication"):
        assert cache.require_current().name == good.name
        assert cache.require_current().name == good.name
    refusals = [r for r in caplog.records if "refused the published model" in r.getMessage()]
    assert len(refusals) == 1 and bad.name in refusals[0].getMessage()  # said once, not every sync
    assert "sha256" in refusals[0].getMessage()
    assert not (cache.root / bad.name).exists()


def test_models_publish_command_publishes_the_shipped_version(tmp_path, pg_url):
    """`moodwatch models publish` for a version from before publication existed (the shipped one)."""
    shipped = tmp_path / "shipped"
    Registry(shipped).promote(_version(Registry(shipped), "shipped", b"shipped model"))
    env = service_env(data_dir=tmp_path / "data", model_dir=shipped, database_url=pg_url)
    out = subprocess.run([sys.executable, "-m", "moodwatch_app.cli", "models", "publish"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "published v" in out.stdout and "current for database-sourced workers" in out.stdout
    cache = PublishedRegistry(tmp_path / "cache", open_database(pg_url), check_every=0)
    assert cache.require_current().model_path.read_bytes() == b"shipped model"

    missing = subprocess.run([sys.executable, "-m", "moodwatch_app.cli", "models", "publish", "vnope"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr


def test_an_archive_reaching_outside_its_folder_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "target").mkdir()
    with pytest.raises(PublicationError, match="not a plain file"):
        unpack(buffer.getvalue(), tmp_path / "target")
    assert not (tmp_path / "escaped").exists()


def test_sqlite_promotions_are_not_published(tmp_path):
    """One machine: every process reads the folders, and the database stays small."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "shipped",
                        local_model_dir=tmp_path / "registry", database_url=url)
    registry = Registry.for_settings(settings)
    _promote(settings, registry, _version(registry, "a", b"m"))
    assert PublishedRegistry(tmp_path / "cache", open_database(url), check_every=0).sync() is None


# ---- a real worker process ----------------------------------------------------------------

def _enqueue(broker: str, files: list[Path], tag: str) -> None:
    app = make_celery(Settings(broker_url=broker))
    now = datetime.now(UTC).isoformat()
    app.send_task(CLASSIFY_TASK, kwargs={"move_files": False}, args=[[
        {"event_id": hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()[:40], "path": str(p),
         "received_at": now} for i, p in enumerate(files)]])
    app.close()


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def _serving(page: str) -> set[str]:
    """The versions the node's worker processes say they serve (value 1) on its /metrics."""
    return set(re.findall(r'^moodwatch_worker_model\{[^}]*version="([^"]+)"[^}]*\} 1\.0$', page, re.M))


@pytest.mark.slow
def test_a_worker_with_no_model_folder_serves_published_versions(tmp_path, tiny_model_dir, redis_url,
                                                               trainer_side):
    settings, registry, sessions = trainer_side
    tiny = Registry(tiny_model_dir).require_current()
    shutil.copytree(tiny.path, registry.root / tiny.name)
    first = registry.get(tiny.name)
    _promote(settings, registry, first)

    empty = tmp_path / "empty-models"
    empty.mkdir()
    port = free_port()
    env = service_env(broker_url=redis_url, database_url=settings.database, model_dir=empty,
                      data_dir=tmp_path / "worker-data", inbox=tmp_path / "in", model_source="database")
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "moodwatch_app.cli", "worker", "-c", "1", "-n", "remote@%h",
         "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
        env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT,  # noqa: SIM115
        start_new_session=True)
    rows = Rows(settings.database)
    try:
        files = [write_image(tmp_path / "in" / f"a{i}.jpg", face_like("happy" if i % 2 else "sad", i))
                 for i in range(6)]
        _enqueue(redis_url, files, "first")
        wait_for(lambda: rows.count() >= 6, 180, "rows from the published version", log)
        assert {(r.status, r.model_version) for r in rows.all()} == {("classified", first.name)}
        assert not any(empty.iterdir())  # nothing came from, or went to, the model folder

        # The batch's metrics are counted just after its rows commit: waited for, not raced.
        done = 'moodwatch_files_total{status="classified"} 6.0'
        wait_for(lambda: done in _metrics(port), 10, "the batch's metrics", log)
        page = _metrics(port)
        assert "moodwatch_batch_size_count 1.0" in page and "moodwatch_batch_seconds_bucket" in page
        assert "moodwatch_drop_to_row_seconds_count 6.0" in page
        # The heartbeat thread sets it within its half-second poll of the model's state.
        wait_for(lambda: _serving(_metrics(port)) == {first.name}, 10, "the metrics' model", log)
        assert 'moodwatch_queue_length{queue="classify"}' in page and "moodwatch_bytes_in_flight 0.0" in page

        # A newer promotion on the trainer's machine: the worker fetches and hot-reloads it.
        newer = registry.new_version_dir("newer")
        shutil.copytree(first.path, newer.path, dirs_exist_ok=True)
        _promote(settings, registry, newer)
        wait_for(lambda: "model " + newer.name + " loaded" in log.read_text(errors="replace"), 120,
                 "the newer version loaded", log)
        more = [write_image(tmp_path / "in" / f"b{i}.jpg", face_like("sad", 100 + i)) for i in range(3)]
        _enqueue(redis_url, more, "second")
        wait_for(lambda: rows.count() >= 9, 120, "rows from the newer version", log)
        assert {r.model_version for r in rows.all() if r.file_name.startswith("b")} == {newer.name}
        wait_for(lambda: _serving(_metrics(port)) == {newer.name}, 10, "the metrics' model", log)
    finally:
        stop(worker)
        rows.close()
