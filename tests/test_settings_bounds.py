"""Settings are checked when read: a bad number, an inbox overlapping the service's folders or a
garbage database URL is one `error:` line naming the variable, from any command, before anything
starts; `status` says when the database cannot be read; numeric CLI options are bounded."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from click.testing import CliRunner

from moodwatch import settings as settings_module
from moodwatch.settings import Settings, allowed_range
from moodwatch_app.cli import main


@pytest.fixture(autouse=True)
def fresh_settings():
    settings_module.get_settings.cache_clear()
    yield
    settings_module.get_settings.cache_clear()


def _base(tmp: Path) -> dict[str, str]:
    return {"MOODWATCH_DATA_DIR": str(tmp / "data"), "MOODWATCH_MODEL_DIR": str(tmp / "models"),
            "MOODWATCH_DATABASE_URL": f"sqlite:///{tmp / 'r.db'}",
            "MOODWATCH_BROKER_URL": "redis://127.0.0.1:1/0",  # never reached: nothing to talk to
            "MOODWATCH_INBOX": None, "MOODWATCH_LOCAL_MODEL_DIR": None}


def _one_error_line(args: list[str], env: dict[str, str | None]) -> str:
    settings_module.get_settings.cache_clear()  # each command is a new process for a user
    result = CliRunner().invoke(main, args, env=env)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_every_numeric_setting_has_bounds():
    numeric = [name for name, info in Settings.model_fields.items()
               if set(typing.get_args(info.annotation) or {info.annotation}) & {int, float}]
    assert {"batch_size", "web_port", "max_file_bytes", "seed"} <= set(numeric)
    unbounded = [name for name in numeric if allowed_range(name) is None]
    assert unbounded == [], f"numeric settings without bounds: {unbounded}"


# The probe's values: each was accepted, and BATCH_SIZE=0 made the watcher spin deaf to SIGINT.
BAD_NUMBERS = {
    "MOODWATCH_BATCH_SIZE": ("0", "at least 1"),
    "MOODWATCH_MAX_FILE_BYTES": ("0", "at least 1"),
    "MOODWATCH_MAX_PIXELS": ("-1", "at least 1"),
    "MOODWATCH_SETTLE_SECONDS": ("-5", "at least 0"),
    "MOODWATCH_VISIBILITY_TIMEOUT": ("0", "at least 1"),
    "MOODWATCH_WORKER_CONCURRENCY": ("-2", "at least 1"),
    "MOODWATCH_JOB_RETRIES": ("-1", "at least 0"),
    "MOODWATCH_WEB_PORT": ("70000", "at most 65535"),
    "MOODWATCH_RESCAN_SECONDS": ("0", "more than 0"),
    "MOODWATCH_RETRAIN_EPOCHS": ("0", "at least 1"),
    "MOODWATCH_SEED": ("-3", "at least 0"),
}


@pytest.mark.parametrize("variable", BAD_NUMBERS)
@pytest.mark.parametrize("command", [["status"], ["results"], ["watch"]])
def test_a_bad_number_is_one_line_naming_the_variable_and_its_range(variable, command, tmp_path):
    value, bound = BAD_NUMBERS[variable]
    line = _one_error_line(command, {**_base(tmp_path), variable: value})
    assert f"{variable}='{value}'" in line and "(allowed: " in line and bound in line, line
    assert not (tmp_path / "data").exists() and not (tmp_path / "r.db").exists()


def test_a_garbage_database_url_is_refused_by_every_command(tmp_path):
    for command in (["status"], ["results"], ["stats"], ["db", "upgrade"]):
        line = _one_error_line(command, {**_base(tmp_path), "MOODWATCH_DATABASE_URL": "garbage"})
        assert "MOODWATCH_DATABASE_URL='garbage'" in line and "not a database URL" in line, line


def test_a_bad_url_is_shown_without_its_password(tmp_path):
    url = "mysqlx://me:Sup3rSecret@db.example/x"
    line = _one_error_line(["status"], {**_base(tmp_path), "MOODWATCH_DATABASE_URL": url})
    assert "Sup3rSecret" not in line and "me:***@" in line, line


def test_status_of_an_unreachable_database_says_so_and_fails(tmp_path):
    url = "postgresql://nobody@127.0.0.1:1/x"  # nothing listens on port 1
    settings_module.get_settings.cache_clear()
    result = CliRunner().invoke(main, ["status"], env={**_base(tmp_path), "MOODWATCH_DATABASE_URL": url})
    assert result.exit_code == 1, result.output
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: database unreachable (MOODWATCH_DATABASE_URL)"), line
    assert "inbox:" in result.stdout  # the rest of the report is still shown


def test_status_of_a_reachable_database_is_exit_0(tmp_path):
    from db.migrate import upgrade

    upgrade(f"sqlite:///{tmp_path / 'r.db'}")
    settings_module.get_settings.cache_clear()
    result = CliRunner().invoke(main, ["status"], env=_base(tmp_path))
    assert result.exit_code == 0, result.output
    assert "database error" not in result.stdout


def _overlaps(t: Path) -> dict[str, tuple[dict[str, str], str]]:
    data, models = t / "data", t / "models"
    return {
        "is the data folder": ({"MOODWATCH_INBOX": str(data)}, "is the data folder"),
        "contains the data folder": ({"MOODWATCH_INBOX": str(t)}, "contains the data folder"),
        "inside processed": ({"MOODWATCH_INBOX": str(data / "processed" / "in")}, "processed"),
        "is rejected": ({"MOODWATCH_INBOX": str(data / "rejected")}, "is the rejected folder"),
        "inside happy": ({"MOODWATCH_INBOX": str(data / "happy" / "x")}, "DATA_DIR/happy"),
        "is sad": ({"MOODWATCH_INBOX": str(data / "sad")}, "is the curated folder DATA_DIR/sad"),
        "is the models": ({"MOODWATCH_INBOX": str(models)}, "is the model folder"),
        "inside the models": ({"MOODWATCH_INBOX": str(models / "in")}, "lies inside the model folder"),
        "contains the models": ({"MOODWATCH_INBOX": str(t / "drop"),
                                 "MOODWATCH_MODEL_DIR": str(t / "drop" / "m")}, "contains the model folder"),
        "is the user registry": ({"MOODWATCH_INBOX": str(data / "models")}, "is the user model folder"),
        "inside the user registry": ({"MOODWATCH_INBOX": str(t / "mine" / "in"),
                                      "MOODWATCH_LOCAL_MODEL_DIR": str(t / "mine")},
                                     "lies inside the user model folder"),
        # The default, DATA_DIR/inbox, is inside the data folder; a model folder there is not.
        "default contains the models": ({"MOODWATCH_MODEL_DIR": str(data / "inbox" / "m")},
                                        "contains the model folder"),
    }


@pytest.mark.parametrize("case", list(_overlaps(Path("/x"))))
def test_an_inbox_overlapping_a_service_folder_is_refused(case, tmp_path):
    env, phrase = _overlaps(tmp_path)[case]
    line = _one_error_line(["status"], {**_base(tmp_path), **env})
    assert "the inbox" in line and "MOODWATCH_INBOX" in line and phrase in line, line


@pytest.mark.parametrize("command", [["watch"], ["submit", "x.jpg"], ["results"], ["stats"], ["run"]])
def test_every_command_refuses_an_inbox_that_would_swallow_the_database(command, tmp_path):
    """The probe: the watcher "rejected" its own live moodwatch.db into rejected/."""
    from db.migrate import upgrade

    data = tmp_path / "data"
    upgrade(f"sqlite:///{data / 'moodwatch.db'}")
    env = {**_base(tmp_path), "MOODWATCH_DATABASE_URL": None, "MOODWATCH_INBOX": str(data)}
    line = _one_error_line(command, env)
    assert "is the data folder" in line, line
    assert sorted(p.name for p in data.iterdir()) == ["moodwatch.db"]  # nothing moved, nothing made


@pytest.mark.parametrize("inbox", ["data/inbox", "data/incoming/phone", "elsewhere/in"])
def test_an_inbox_of_its_own_is_accepted(inbox, tmp_path):
    s = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models", inbox=tmp_path / inbox)
    assert s.inbox_dir == tmp_path / inbox


def test_an_inbox_reached_through_a_link_is_compared_where_it_leads(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    line = _one_error_line(["status"], {**_base(tmp_path), "MOODWATCH_INBOX": str(tmp_path / "link")})
    assert "is the data folder" in line, line


BAD_OPTIONS = {
    "results --limit": (["results", "--limit", "-1"], "--limit"),
    "train --batch-size": (["train", "--batch-size", "0"], "--batch-size"),
    "train --patience": (["train", "--patience", "-1"], "--patience"),
    "train --seed": (["train", "--seed", "-1"], "--seed"),
    "worker -c": (["worker", "-c", "0"], "--concurrency"),
    "bench --count": (["bench", "--count", "0"], "--count"),
    "bench --workers": (["bench", "--workers", "0"], "--workers"),
    "bench -c": (["bench", "-c", "0"], "--concurrency"),
    "bench --batch": (["bench", "--batch", "0"], "--batch"),
    "web --port": (["web", "--port", "70000"], "--port"),
}


@pytest.mark.parametrize("name", BAD_OPTIONS)
def test_a_numeric_option_out_of_range_is_one_line(name, tmp_path):
    args, option = BAD_OPTIONS[name]
    line = _one_error_line(args, _base(tmp_path))
    assert option in line and "range" in line, line
