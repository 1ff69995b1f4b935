"""Commands run from any folder reach the service `moodwatch run` started, or say where they looked."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from moodwatch import settings as settings_module
from moodwatch.home import LOCATIONS, read_record, write_record
from moodwatch.settings import Settings
from moodwatch_app.cli import main

NO_LOCATIONS = {f"MOODWATCH_{k.upper()}": None for k in LOCATIONS}


def invoke(args: list[str], env: dict[str, str | None]):
    settings_module.get_settings.cache_clear()  # each command is a new process for a user
    return CliRunner().invoke(main, args, env=env)


@pytest.fixture(autouse=True)
def fresh_settings():
    settings_module.get_settings.cache_clear()
    yield
    settings_module.get_settings.cache_clear()


def test_no_service_anywhere_is_one_line_naming_where_it_looked(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    home = tmp_path / "home"
    for command in (["results"], ["status"], ["models"]):
        r = invoke(command, env={**NO_LOCATIONS, "MOODWATCH_HOME": str(home)})
        assert r.exit_code == 1, r.output
        assert str(home / "service.json") in r.stderr and str(elsewhere) in r.stderr
        assert "MOODWATCH_HOME" in r.stderr and "MOODWATCH_DATA_DIR" in r.stderr
    assert list(elsewhere.iterdir()) == [], "a command created a service of its own here"


def test_the_record_of_run_is_what_commands_elsewhere_use(tmp_path, monkeypatch, tiny_model_dir):
    from datetime import UTC, datetime

    from db.engine import make_engine, make_sessionmaker
    from db.migrate import upgrade
    from db.repository import insert_results
    from moodwatch.outcome import Outcome

    home = tmp_path / "home"
    monkeypatch.setenv("MOODWATCH_HOME", str(home))
    service = Settings(data_dir=tmp_path / "svc" / "data", model_dir=tiny_model_dir)
    write_record(service)
    assert read_record().data_dir == str(tmp_path / "svc" / "data")
    upgrade(service.database)
    engine = make_engine(service.database)
    with make_sessionmaker(engine)() as s, s.begin():
        insert_results(s, [Outcome.new("e1", "/in/x.jpg", datetime.now(UTC), status="classified",
                                       label="sad", confidence=0.8)])
    engine.dispose()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    env = {**NO_LOCATIONS, "MOODWATCH_HOME": str(home)}
    rows = json.loads(invoke(["results", "--format", "json"], env=env).output)
    assert [r["file_name"] for r in rows] == ["x.jpg"]
    models = invoke(["models"], env=env)
    assert (tiny_model_dir / "current").read_text().strip() in models.output
    status = json.loads(invoke(["status", "--json"], env=env).output)
    assert status["inbox"] == str(tmp_path / "svc" / "data" / "inbox")
    assert list(elsewhere.iterdir()) == []
    # A variable still wins over the record, setting by setting.
    other = tmp_path / "other-models"
    r = invoke(["models"], env={**env, "MOODWATCH_MODEL_DIR": str(other)})
    assert f"no model versions in {other}" in r.output


def test_relative_folders_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings(data_dir="rel/data", model_dir="m")
    assert s.data_dir == tmp_path / "rel" / "data" and s.inbox_dir == tmp_path / "rel" / "data" / "inbox"
    assert s.model_dir == tmp_path / "m"


@pytest.mark.slow
def test_run_then_status_and_submit_of_a_relative_path_from_another_folder(tmp_path, tiny_model_dir):
    """The README's path: `moodwatch run` in one folder, commands from another."""
    import subprocess
    import sys

    from tests.imagegen import face_like, write_image
    from tests.procs import Rows, service_env, stop, wait_for

    service_dir, elsewhere = tmp_path / "svc", tmp_path / "elsewhere"
    service_dir.mkdir()
    env = service_env(model_dir=tiny_model_dir, settle_seconds="0.5", batch_wait="0.2")
    for key in ("MOODWATCH_DATA_DIR", "MOODWATCH_DATABASE_URL", "MOODWATCH_BROKER_URL", "MOODWATCH_INBOX"):
        env.pop(key, None)
    log = tmp_path / "run.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "run", "--no-web", "--no-beat"],
                                env=env, cwd=service_dir, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    # From elsewhere, nothing tells the commands where the service is but its record.
    cli_env = {k: v for k, v in env.items() if k != "MOODWATCH_MODEL_DIR"}
    photo = write_image(elsewhere / "rel2.jpg", face_like("happy", 7))
    rows = Rows(f"sqlite:///{service_dir / 'data' / 'moodwatch.db'}")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moodwatch_app.cli", *args], env=cli_env, cwd=elsewhere,
                              capture_output=True, text=True, timeout=120)

    try:
        wait_for(lambda: json.loads(cli("status", "--json").stdout or "{}").get("workers_alive", 0) >= 1,
                 120, "a worker alive, seen by status from another folder", log)
        status = json.loads(cli("status", "--json").stdout)
        assert status["inbox"] == str(service_dir / "data" / "inbox")
        assert status["current_model"] == (tiny_model_dir / "current").read_text().strip()
        submitted = cli("submit", "rel2.jpg")
        assert submitted.returncode == 0 and "queued" in submitted.stdout, submitted.stderr
        wait_for(lambda: rows.count() >= 1, 60, "the submitted file's row", log)
        [row] = rows.all()
        assert row.status == "classified" and row.path == str(photo) and row.duplicate_of is None
    finally:
        stop(proc)
        rows.close()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["rel2.jpg"]  # no ./data of its own


def test_a_child_process_reaches_the_same_service(tmp_path, monkeypatch):
    """The one place a child's MOODWATCH_* environment is made: read back, it is the parent's."""
    from moodwatch.settings import Settings, child_env

    monkeypatch.chdir(tmp_path)
    parent = Settings(data_dir="data", model_dir="models")
    env = child_env(parent, "redis://127.0.0.1:6379/5", MOODWATCH_BATCH_SIZE="8")
    monkeypatch.chdir("/")
    for key, value in env.items():
        if key.startswith("MOODWATCH_"):
            monkeypatch.setenv(key, value)
    child = Settings()
    assert (child.broker_url, child.database, child.data_dir, child.model_dir, child.inbox_dir,
            child.batch_size) == ("redis://127.0.0.1:6379/5", parent.database, parent.data_dir,
                                  parent.model_dir, parent.inbox_dir, 8)
