"""The nightly retrain: skip when unchanged, train when changed, never promote a worse model,
never two at once."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from moodwatch.registry import Registry
from moodwatch.settings import Settings
from tests.imagegen import make_curated
from tests.procs import ROOT, service_env
from trainer.retrain import retrain, training_lock
from trainer.training import TrainOptions, train

pytestmark = pytest.mark.slow


@pytest.fixture
def broker(tmp_path):
    from moodwatch.broker import embedded_url, start_embedded

    client = start_embedded(tmp_path / "redis" / "redis.db")
    yield embedded_url(client)
    client.shutdown()


def test_retrain_skips_unchanged_data_and_trains_on_new(tmp_path, broker):
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models")
    make_curated(settings.data_dir, per_class=10)
    first = retrain(settings, broker, epochs=1)
    assert first["outcome"] == "promoted"
    second = retrain(settings, broker, epochs=1)
    assert second["outcome"] == "skipped" and "unchanged" in second["reason"]
    make_curated(settings.data_dir, per_class=3, start=50)  # new curated photos
    third = retrain(settings, broker, epochs=1)
    assert third["outcome"] in ("promoted", "trained")
    assert third["version"] != first["version"]
    runs = Registry(settings.model_dir).runs()
    assert [r["outcome"] for r in runs][1] == "skipped"
    assert len(runs) == 3 and len(Registry(settings.model_dir).versions()) == 2


def test_worse_model_is_not_promoted(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models")
    make_curated(settings.data_dir, per_class=20)
    good = train(settings, TrainOptions(data_dir=settings.data_dir, epochs=8, batch_size=8,
                                        progress=False))
    assert good.promoted and good.metrics["accuracy"] >= 0.75, good.metrics
    # A learning rate of zero leaves the network at its random start: a worse model.
    bad = train(settings, TrainOptions(data_dir=settings.data_dir, epochs=1, learning_rate=0.0,
                                       progress=False))
    assert bad.metrics["accuracy"] < good.metrics["accuracy"]
    assert not bad.promoted and "not promoted" in bad.reason
    assert Registry(settings.model_dir).current_name() == good.version.name


def test_lock_held_means_skip(tmp_path, broker):
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models")
    make_curated(settings.data_dir, per_class=6)
    with training_lock(broker) as got:
        assert got
        outcome = retrain(settings, broker, epochs=1)
    assert outcome["outcome"] == "skipped" and "lock" in outcome["reason"]
    assert Registry(settings.model_dir).versions() == []


def test_two_concurrent_retrains_never_train_together(tmp_path, redis_url):
    """Two processes (two beats' tasks, or beat plus a manual run) start at once: one trains."""
    data, models = tmp_path / "data", tmp_path / "models"
    make_curated(data, per_class=10)
    env = service_env(data_dir=data, model_dir=models, broker_url=redis_url)
    procs = [subprocess.Popen([sys.executable, "-m", "moodwatch.cli", "retrain", "--epochs", "2"],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    outcomes = sorted(r["outcome"] for r in Registry(models).runs())
    assert outcomes == ["promoted", "skipped"], outs
    skipped = [r for r in Registry(models).runs() if r["outcome"] == "skipped"][0]
    assert "lock" in skipped["reason"]


def test_lock_is_exclusive_across_threads(broker):
    results = []
    barrier = threading.Barrier(4)

    def grab():
        barrier.wait()
        with training_lock(broker) as got:
            results.append(got)
            barrier_done.wait(5)

    barrier_done = threading.Event()
    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    while len(results) < 4:
        pass
    barrier_done.set()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
