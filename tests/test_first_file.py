"""The first file after a start, and the first after a model change, are as fast as the rest:
the worker loads and warms up the current model when its process starts and when it changes."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.imagegen import face_like, write_image
from tests.procs import Rows, service_env, stop, wait_for
from tests.test_service_e2e import start_service

pytestmark = pytest.mark.slow
# The target: a row within 3 s of the file settling (received_at is stamped by the
# watcher when the file has settled and passed validation; classified_at by the worker).
LATENCY_LIMIT_S = 3.0


def _warm_lines(log) -> str:
    return "\n".join(line for line in log.read_text(errors="replace").splitlines() if "warmed up" in line)


def _latency(rows: Rows, name: str) -> tuple[float, str]:
    [row] = [r for r in rows.all() if r.file_name == name]
    assert row.status == "classified", row.error
    return (row.classified_at - row.received_at).total_seconds(), row.model_version


def test_first_file_after_start_and_after_a_model_change_is_fast(tmp_path, tiny_model_dir):
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    first = (models / "current").read_text().strip()
    data = tmp_path / "data"
    env = service_env(data_dir=data, model_dir=models, settle_seconds="0.5", batch_wait="0.2",
                      worker_concurrency="1")
    env.pop("MOODWATCH_BROKER_URL", None)
    env.pop("MOODWATCH_DATABASE_URL", None)
    log = tmp_path / "run.log"
    proc = start_service(env, log)
    rows = Rows(f"sqlite:///{data / 'moodwatch.db'}")
    try:
        wait_for(lambda: first in _warm_lines(log), 180, "the worker to load and warm up the model", log)
        wait_for(lambda: "watching" in log.read_text(errors="replace"), 60, "the watcher", log)
        write_image(data / "inbox" / "first.jpg", face_like("happy", 1, 300))
        wait_for(lambda: rows.count() >= 1, 60, "the first row", log)
        took, version = _latency(rows, "first.jpg")
        assert version == first
        assert took < LATENCY_LIMIT_S, f"first file after start: {took:.2f}s from settled to row"

        # A new version is promoted: the worker warms it up before the next file arrives.
        second = first + "-b"
        shutil.copytree(models / first, models / second)
        (models / "current").write_text(second + "\n")
        wait_for(lambda: second in _warm_lines(log), 120, "the new model warmed up", log)
        time.sleep(0.5)
        write_image(data / "inbox" / "second.jpg", face_like("sad", 2, 300))
        wait_for(lambda: rows.count() >= 2, 60, "the second row", log)
        took2, version2 = _latency(rows, "second.jpg")
        assert version2 == second
        assert took2 < LATENCY_LIMIT_S, f"first file after a model change: {took2:.2f}s"
        print(f"settled-to-row: first file {took:.2f}s, first after model change {took2:.2f}s")
    finally:
        stop(proc)
        rows.close()
