"""A model version that cannot serve (another input shape, a file cut short, a failed warm-up)
is a model-load error: jobs are retried until a version that serves is current, no job is lost,
and the reason is logged once per change, saying what is wrong."""

from __future__ import annotations

import hashlib
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from db.migrate import upgrade
from moodwatch import settings as settings_module
from moodwatch.modelio import ModelLoadError
from moodwatch.queue import CLASSIFY_TASK, make_celery
from moodwatch.registry import MODEL_FILE, Registry, Version
from moodwatch.settings import Settings
from moodwatch_app.cli import main
from tests.imagegen import face_like, write_image
from tests.procs import Rows, service_env, start_worker, stop, wait_for
from worker.inference import Classifier, ModelCache, ModelUnavailable

SHAPE = "takes inputs of shape 64x64x3, not the 256x256x3 images the worker gives it"
TRUNCATED = "not a valid Keras archive (truncated or corrupt)"


@pytest.fixture
def models(tmp_path, tiny_model_dir) -> Path:
    """A copy of the tiny registry plus two versions that cannot serve: `vshape` (a model for
    64x64 inputs) and `vtrunc` (the good model's file cut in half)."""
    import keras
    from keras import layers

    root = tmp_path / "models"
    shutil.copytree(tiny_model_dir, root)
    good = Registry(root).require_current()
    (root / "vshape").mkdir()
    inputs = keras.Input((64, 64, 3))
    outputs = layers.Dense(1, activation="sigmoid")(layers.GlobalAveragePooling2D()(inputs))
    keras.Model(inputs, outputs).save(root / "vshape" / MODEL_FILE)
    (root / "vtrunc").mkdir()
    whole = good.model_path.read_bytes()
    (root / "vtrunc" / MODEL_FILE).write_bytes(whole[: len(whole) // 2])
    return root


def _use(root: Path, name: str) -> None:
    Registry(root).promote(Version(name, root / name))


def test_classifier_says_what_is_wrong(models):
    registry = Registry(models)
    with pytest.raises(ModelLoadError, match=f"model file {models / 'vshape' / MODEL_FILE} {SHAPE}"):
        Classifier(registry.get("vshape"))
    with pytest.raises(ModelLoadError) as caught:
        Classifier(registry.get("vtrunc"))
    assert str(caught.value) == f"cannot load model {models / 'vtrunc' / MODEL_FILE}: {TRUNCATED}"
    assert "File not found" not in str(caught.value)


def test_cli_classify_with_a_truncated_model_is_one_error_line(models, tmp_path):
    settings_module.get_settings.cache_clear()
    photo = write_image(tmp_path / "a.jpg", face_like("happy", 1))
    try:
        r = CliRunner().invoke(main, ["classify", "--model", "vtrunc", str(photo)],
                               env={"MOODWATCH_MODEL_DIR": str(models), "MOODWATCH_DATA_DIR": str(tmp_path)})
    finally:
        settings_module.get_settings.cache_clear()
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"error: cannot load model {models / 'vtrunc' / MODEL_FILE}: {TRUNCATED}"], r.output


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_cache_logs_each_problem_once_and_does_not_reload_it(models, caplog):
    good = Registry(models).require_current()
    cache = ModelCache(Registry(models), batch_size=2, check_every=0)
    loads: list[str] = []
    load = cache._load
    cache._load = lambda v: (loads.append(v.name), load(v))[1]  # counts the loads, loads for real
    _use(models, "vshape")
    with caplog.at_level(logging.WARNING, logger="moodwatch.worker"):
        for _ in range(4):
            with pytest.raises(ModelUnavailable):
                cache.get()
        _use(models, "vtrunc")
        for _ in range(3):
            with pytest.raises(ModelUnavailable):
                cache.get()
        assert loads == ["vshape", "vtrunc"]  # a refused version is not loaded at every check
        _use(models, good.name)
        assert cache.get().version == good
        _use(models, "vshape")  # a broken promote: the model held serves meanwhile
        assert cache.get().version == good and cache.get().version == good
    lines = _warnings(caplog)
    assert [line for line in lines if SHAPE in line] == [
        f"model cannot serve: model file {models / 'vshape' / MODEL_FILE} {SHAPE}",
        f"model cannot serve: model file {models / 'vshape' / MODEL_FILE} {SHAPE} ({good.name} serves "
        "meanwhile)"]
    assert [line for line in lines if TRUNCATED in line] == [
        f"model cannot serve: cannot load model {models / 'vtrunc' / MODEL_FILE}: {TRUNCATED}"]
    assert len(lines) == 3
    # What the task's retry says (Celery logs it at every retry) is short; the reason was logged.
    with pytest.raises(ModelUnavailable) as caught:
        ModelCache(Registry(models), check_every=0).get()
    assert SHAPE not in str(caught.value) and "model cannot serve" in str(caught.value)


def test_a_failed_warm_up_is_a_model_load_error(models, monkeypatch, caplog):
    def broken(self) -> None:
        raise ValueError("Input 0 of layer 'conv' is incompatible with the layer\n(a page of detail)")

    monkeypatch.setattr(Classifier, "warm_up", broken)
    cache = ModelCache(Registry(models), batch_size=2, check_every=0)
    with caplog.at_level(logging.WARNING, logger="moodwatch.worker"), pytest.raises(ModelUnavailable):
        cache.get()
    name = Registry(models).current_name()
    assert _warnings(caplog) == [f"model cannot serve: model {name} failed its warm-up: ValueError: "
                                 "Input 0 of layer 'conv' is incompatible with the layer"]


@pytest.mark.slow
def test_worker_process_retries_until_a_version_serves(tmp_path, models, redis_url):
    good = Registry(models).require_current().name
    db = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(db)
    inbox = tmp_path / "in"
    files = [write_image(inbox / f"p{i}.jpg", face_like("happy" if i % 2 else "sad", i)) for i in range(3)]
    _use(models, "vshape")
    env = service_env(broker_url=redis_url, database_url=db, model_dir=models, data_dir=tmp_path / "data",
                      inbox=inbox)
    log = tmp_path / "worker.log"
    text = lambda: log.read_text(errors="replace")  # noqa: E731
    shape_line = f"model file {models / 'vshape' / MODEL_FILE} {SHAPE}"
    trunc_line = f"cannot load model {models / 'vtrunc' / MODEL_FILE}: {TRUNCATED}"
    worker = start_worker(env, log, concurrency=1)
    rows = Rows(db)
    try:
        wait_for(lambda: shape_line in text(), 120, "the shape problem logged", log)
        now = datetime.now(UTC).isoformat()
        app = make_celery(Settings(broker_url=redis_url))
        app.send_task(CLASSIFY_TASK, kwargs={"move_files": False}, args=[[
            {"event_id": hashlib.sha256(str(p).encode()).hexdigest()[:40], "path": str(p), "received_at": now}
            for p in files]])
        app.close()
        wait_for(lambda: text().count("Retry in") >= 2, 60, "the job retried", log)
        assert rows.count() == 0
        _use(models, "vtrunc")
        wait_for(lambda: trunc_line in text(), 30, "the truncated file logged", log)
        retries = text().count("Retry in")
        wait_for(lambda: text().count("Retry in") > retries, 60, "a retry with the truncated file", log)
        assert rows.count() == 0
        _use(models, good)
        wait_for(lambda: rows.count() >= len(files), 120, "rows once a version serves", log)
        found = rows.all()
    finally:
        stop(worker)
        rows.close()
    assert sorted(r.path for r in found) == sorted(map(str, files))
    assert all(r.status == "classified" and r.model_version == good for r in found)
    out = text()
    assert out.count(shape_line) == 1 and out.count(trunc_line) == 1, out[-4000:]
    assert "raised unexpected" not in out and "File not found" not in out
