"""A line a user sees is one they can act on: `moodwatch run`'s log (start-up, a broker lost and
found again) and a retrain carry none of the warnings nobody acts on, and still carry the ones a
user does (the broker was lost), and `make` installs with pip's banners off."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import warnings

import pytest

from tests.imagegen import face_like, make_curated, write_image
from tests.procs import ROOT, Rows, free_port, kill_pids, redis_servers_in, service_env, stop, wait_for

pytestmark = pytest.mark.slow

# What the log said before, and nobody could act on.
NOISE = {
    "superuser privileges": "Celery's warning about running as root (JSON only: nothing to fix)",
    "In Celery 5.1 we introduced": "Celery's deprecation notice at every broker reconnect",
    "CPendingDeprecationWarning": "a Celery deprecation warning",
    "Skipping prefetch count reduction": "Celery's note at every reconnect",
    "/MainProcess]": "Celery's own log format: it took over the root logger",
    "shuffle=True": "Keras's shuffle warning during a retrain",
    "triggered tf.function retracing": "TensorFlow's retracing warning",
}


def assert_quiet(text: str) -> None:
    found = {what: why for what, why in NOISE.items() if what in text}
    assert not found, f"{found}\n--- log ---\n{text[-4000:]}"


def test_run_log_after_a_start_and_a_broker_restart_is_quiet(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    env = service_env(data_dir=data, model_dir=tiny_model_dir, settle_seconds="0.5", batch_wait="0.3",
                      web_port=str(free_port()))
    env.pop("MOODWATCH_BROKER_URL", None)
    env.pop("MOODWATCH_DATABASE_URL", None)
    log = tmp_path / "run.log"

    def text() -> str:
        return log.read_text(errors="replace")

    with open(log, "wb") as fh:  # everything a user of `moodwatch run` sees: beat and web too
        proc = subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "run"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    rows = Rows(f"sqlite:///{data / 'moodwatch.db'}")
    try:
        wait_for(lambda: "moodwatch is running" in text(), 180, "the banner", log)
        # A broker lost and found again: the worker reconnects (where Celery warned each time).
        [first] = redis_servers_in(data / ".redis")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: text().count("celery.worker.consumer.connection: Connected to") >= 2, 120,
                 "the worker to reconnect", log)
        write_image(data / "inbox" / "after.jpg", face_like("sad", 3))
        wait_for(lambda: rows.count() >= 1, 120, "a row after the reconnect", log)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        stop(proc)
        rows.close()
        kill_pids(redis_servers_in(data / ".redis"))
    out = text()
    assert_quiet(out)
    # What a user does act on is still said: the broker was lost, and the service started it again.
    assert "Connection to broker lost" in out and "embedded Redis had stopped; started it again" in out
    # The service's own readiness reads are its own connection, not another user's: Redis stops.
    assert "embedded Redis stopped" in out and "left running" not in out, out[-3000:]


def test_a_retrain_trains_and_compares_without_noise(tmp_path, redis_url, capfd, caplog):
    from moodwatch.settings import Settings
    from trainer.retrain import retrain

    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models", retrain_min_per_class=5)
    make_curated(settings.data_dir, per_class=8)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = retrain(settings, redis_url, epochs=1)
        make_curated(settings.data_dir, per_class=3, start=50)  # new photos: a candidate to compare
        second = retrain(settings, redis_url, epochs=1)
    assert first["outcome"] == "promoted" and second["outcome"] in ("promoted", "trained"), (first, second)
    said = "\n".join(str(w.message) for w in caught) + caplog.text + "".join(capfd.readouterr())
    assert_quiet(said)


def test_pipelines_built_one_after_another_do_not_warn_of_retracing(tiny_model_dir, caplog, capfd):
    """An evaluation builds a Pipeline per version: each traces once, which is no excess."""
    import numpy as np

    from moodwatch.images import IMAGE_SIZE
    from moodwatch.modelio import load_model
    from moodwatch.pipeline import Pipeline
    from moodwatch.registry import Registry

    caplog.set_level(logging.WARNING)
    version = Registry(tiny_model_dir).require_current()
    images = np.zeros((3, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    # The Keras model itself (its tf.function), whatever runtime Pipeline.load would choose.
    scores = [Pipeline(load_model(version.path / "model.keras"), batch_size=4).whole_scores(images)
              for _ in range(8)]
    assert all(np.allclose(s, scores[0]) for s in scores)
    said = caplog.text + "".join(capfd.readouterr())  # TensorFlow's logger may write on its own
    assert "retracing" not in said, said[-3000:]


def test_make_installs_with_pip_banners_off():
    out = subprocess.run(["make", "-n", "-B", "install-dev"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    pips = [line for line in out.stdout.splitlines() if "/pip " in line]
    assert len(pips) >= 3, out.stdout + out.stderr
    for line in pips:  # pip's errors still show: only its banners are off
        assert "PIP_ROOT_USER_ACTION=ignore" in line and "--disable-pip-version-check" in line, line
        assert "--quiet" in line, line
