"""Commands never quietly use another service: the current folder's data/ wins over the record
`moodwatch run` leaves, a data folder given by a variable brings its own database and broker, a
record whose run is gone is named stale, and no read-only command creates a database or folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from moodwatch import settings as settings_module
from moodwatch.home import LOCATIONS, load_settings, read_record, record_path, write_record
from moodwatch.settings import Settings
from moodwatch_app.cli import main

NO_LOCATIONS = {f"MOODWATCH_{k.upper()}": None for k in LOCATIONS}


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOODWATCH_HOME", str(tmp_path / "home"))
    for key in NO_LOCATIONS:
        monkeypatch.delenv(key, raising=False)
    settings_module.get_settings.cache_clear()
    yield
    settings_module.get_settings.cache_clear()


def invoke(args: list[str], **env: str):
    settings_module.get_settings.cache_clear()  # each command is a new process for a user
    return CliRunner().invoke(main, args, env={**NO_LOCATIONS, "MOODWATCH_HOME": os.environ["MOODWATCH_HOME"],
                                               **env})


def _service(data: Path, *names: str) -> Settings:
    """A data folder whose database holds one classified row per name."""
    from db.engine import make_engine, make_sessionmaker
    from db.migrate import upgrade
    from db.repository import insert_results
    from moodwatch.outcome import Outcome

    settings = Settings(data_dir=data, model_dir=data.parent / "models")
    upgrade(settings.database)
    engine = make_engine(settings.database)
    with make_sessionmaker(engine)() as s, s.begin():
        insert_results(s, [Outcome.new(f"e-{n}", f"/in/{n}", datetime.now(UTC), status="classified",
                                       label="sad", confidence=0.8) for n in names])
    engine.dispose()
    return settings


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _record(settings: Settings, pid: int | None = None) -> Path:
    """What `moodwatch run` writes; pid: that of a run since gone (default: this live process)."""
    path = write_record(settings)
    if pid is not None:
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "pid": pid}))
    return path


def _names(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [r["file_name"] for r in json.loads(result.stdout)]


def _one_error_line(result) -> str:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_run_records_its_pid_and_a_gone_run_is_not_running(tmp_path):
    _record(Settings(data_dir=tmp_path / "d", model_dir=tmp_path / "m"))
    assert read_record().pid == os.getpid() and read_record().running()
    _record(Settings(data_dir=tmp_path / "d", model_dir=tmp_path / "m"), pid=_dead_pid())
    assert not read_record().running()


def test_the_current_folders_data_wins_over_the_record(tmp_path, monkeypatch):
    """The probe: in a clone, `results` printed another service's (empty) table."""
    svc = _service(tmp_path / "svc" / "data", "svc.jpg")
    _record(svc.model_copy(update={"database_url": svc.database}))  # as a PostgreSQL one would be
    clone = tmp_path / "clone"
    _service(clone / "data", "clone.jpg")
    monkeypatch.chdir(clone)
    assert _names(invoke(["results", "--format", "json"])) == ["clone.jpg"]
    status = invoke(["status", "--json"])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.stdout)
    assert shown["database"] == f"sqlite:///{clone / 'data' / 'moodwatch.db'}"
    assert shown["inbox"] == str(clone / "data" / "inbox")
    assert "warning" not in status.stderr


def test_a_data_folder_variable_brings_its_own_database_and_broker(tmp_path, monkeypatch):
    """The probe: MOODWATCH_DATA_DIR still took the database and broker from the record."""
    svc = _service(tmp_path / "svc" / "data", "svc.jpg")
    _record(svc.model_copy(update={"database_url": svc.database, "broker_url": "redis://127.0.0.1:1/0",
                                   "inbox": tmp_path / "svc" / "in"}))
    mine = tmp_path / "mine" / "data"
    _service(mine, "mine.jpg")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert _names(invoke(["results", "--format", "json"], MOODWATCH_DATA_DIR=str(mine))) == ["mine.jpg"]
    status = invoke(["status", "--json"], MOODWATCH_DATA_DIR=str(mine))
    assert status.exit_code == 0, status.output
    shown = json.loads(status.stdout)
    assert shown["database"] == f"sqlite:///{mine / 'moodwatch.db'}"
    assert shown["broker_url"] == "embedded" and shown["inbox"] == str(mine / "inbox")
    # Without the variable, the record is what a command from elsewhere uses, all of it.
    assert _names(invoke(["results", "--format", "json"])) == ["svc.jpg"]
    assert list(elsewhere.iterdir()) == []


def test_a_record_whose_run_is_gone_is_used_and_named_stale(tmp_path, monkeypatch):
    """After Ctrl-C the results stay readable, but the user is told the service is not running."""
    svc = _service(tmp_path / "svc" / "data", "old.jpg")
    path = _record(svc, pid=_dead_pid())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = invoke(["results", "--format", "json"])
    assert _names(result) == ["old.jpg"]
    [warning] = [line for line in result.stderr.splitlines() if line.strip()]
    assert warning.startswith(f"warning: stale service record {path}") and "no longer running" in warning
    _record(svc)  # a run that is alive: no warning
    live = invoke(["results", "--format", "json"])
    assert _names(live) == ["old.jpg"] and "warning" not in live.stderr, live.stderr


@pytest.mark.parametrize("command", [["results"], ["stats"], ["status"], ["models"], ["submit", "x.jpg"]])
def test_a_stale_record_whose_folders_are_gone_is_refused(command, tmp_path, monkeypatch):
    """The probe: `results` made a new empty database there and exited 0."""
    import shutil

    svc = tmp_path / "svc"
    _record(_service(svc / "data", "old.jpg"), pid=_dead_pid())
    shutil.rmtree(svc)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    line = _one_error_line(invoke(command))
    assert str(record_path()) in line and "stale" in line and "no longer exists" in line, line
    assert not svc.exists() and list(elsewhere.iterdir()) == []


def test_run_with_a_record_whose_folders_are_gone_starts_afresh_here(tmp_path, monkeypatch):
    _record(Settings(data_dir=tmp_path / "gone" / "data", model_dir=tmp_path / "gone" / "models"),
            pid=_dead_pid())
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert load_settings(starting_service=True).data_dir == here / "data"


@pytest.mark.parametrize("command", [["results"], ["stats"], ["status"]])
def test_no_read_only_command_creates_a_database(command, tmp_path, monkeypatch):
    clone = tmp_path / "clone"
    (clone / "data").mkdir(parents=True)
    monkeypatch.chdir(clone)
    line = _one_error_line(invoke(command))
    assert f"no database at {clone / 'data' / 'moodwatch.db'}" in line, line
    assert list((clone / "data").iterdir()) == [] and sorted(p.name for p in clone.iterdir()) == ["data"]
    # Nor in a data folder a variable names that does not exist.
    missing = tmp_path / "nowhere" / "data"
    line = _one_error_line(invoke(command, MOODWATCH_DATA_DIR=str(missing)))
    assert "no database at" in line and not (tmp_path / "nowhere").exists(), line


def test_models_of_a_missing_folder_creates_none(tmp_path, monkeypatch):
    clone = tmp_path / "clone"
    (clone / "data").mkdir(parents=True)
    monkeypatch.chdir(clone)
    result = invoke(["models"])
    assert result.exit_code == 0 and "no model versions in" in result.stdout, result.output
    assert sorted(p.name for p in clone.iterdir()) == ["data"]
