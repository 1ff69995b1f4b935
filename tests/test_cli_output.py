"""The CLI's one output option (--format, with --json as its alias), its one version summary,
and settings read only when a command needs them."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from moodwatch import settings as settings_module
from moodwatch_app.cli import main
from tests.imagegen import face_like, write_image
from tests.test_cli import _commands


@pytest.fixture(autouse=True)
def fresh_settings():
    settings_module.get_settings.cache_clear()
    yield
    settings_module.get_settings.cache_clear()


def run(args, env):
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


@pytest.fixture
def results_db(tmp_path):
    from db.engine import make_engine, make_sessionmaker
    from db.migrate import upgrade
    from db.repository import insert_results
    from moodwatch.outcome import Outcome

    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s, s.begin():
        insert_results(s, [Outcome.new(f"e{i}", f"/in/{i}.jpg", datetime.now(UTC), status="classified",
                                       label="sad", confidence=0.8) for i in range(3)])
    engine.dispose()
    return {"MOODWATCH_DATABASE_URL": url}


@pytest.mark.parametrize("command", [["results"], ["stats"]])
def test_json_flag_prints_what_format_json_prints(command, results_db):
    alias = run([*command, "--json"], results_db)
    spelled = run([*command, "--format", "json"], results_db)
    assert alias.exit_code == spelled.exit_code == 0, alias.output
    assert json.loads(alias.output) == json.loads(spelled.output)


def test_a_format_a_command_does_not_offer_is_a_one_line_error(results_db):
    r = CliRunner().invoke(main, ["stats", "--format", "csv"], env=results_db)
    assert r.exit_code == 1
    assert r.stderr.startswith("error: Invalid value for '--format'") and len(r.stderr.splitlines()) == 1


def test_models_csv_has_a_line_per_version_and_marks_the_current(tiny_model_dir):
    current = (tiny_model_dir / "current").read_text().strip()
    r = run(["models", "--format", "csv"], {"MOODWATCH_MODEL_DIR": str(tiny_model_dir)})
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    listed = json.loads(run(["models", "--json"], {"MOODWATCH_MODEL_DIR": str(tiny_model_dir)}).output)
    assert [row["version"] for row in rows] == [v["version"] for v in listed["versions"]]
    assert [row["version"] for row in rows if row["current"] == "True"] == [current]


def test_models_cli_and_api_show_the_same_figures(tiny_model_dir, tmp_path, sqlite_url):
    from fastapi.testclient import TestClient

    from db.migrate import upgrade
    from moodwatch.settings import Settings
    from web.app import create_app

    cli = json.loads(run(["models", "--json"], {"MOODWATCH_MODEL_DIR": str(tiny_model_dir)}).output)
    settings = Settings(data_dir=tmp_path / "data", model_dir=tiny_model_dir, database_url=sqlite_url,
                        broker_url="redis://127.0.0.1:1/0")
    upgrade(sqlite_url)
    with TestClient(create_app(settings)) as client:
        api = client.get("/api/models").json()
    assert [v["version"] for v in cli["versions"]] == [v["version"] for v in api["versions"]]
    for mine, theirs in zip(cli["versions"], api["versions"], strict=True):
        assert mine["architecture"] == theirs["architecture"]
        assert mine["accuracy"] == theirs["metrics"]["accuracy"] is not None
        assert mine["test_images"] == theirs["metrics"]["n"]
        assert mine["current"] == (mine["version"] == api["current"])


def test_classify_csv_is_a_header_and_a_line_per_file(tmp_path, tiny_model_dir):
    photo = write_image(tmp_path / "a.jpg", face_like("happy", 1))
    text = tmp_path / "t.jpg"
    text.write_text("not an image")
    r = CliRunner().invoke(main, ["classify", "--format", "csv", str(photo), str(text)],
                           env={"MOODWATCH_MODEL_DIR": str(tiny_model_dir)})
    assert r.exit_code == 1  # a file failed, whatever the shape
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["file"] for row in rows] == [str(photo), str(text)]
    assert rows[0]["label"] in ("happy", "sad") and rows[0]["error"] == ""
    assert rows[1]["label"] == "" and "not a JPEG, PNG or BMP" in rows[1]["error"]


@pytest.mark.parametrize("name", [name for name, _ in _commands()])
def test_help_answers_where_no_settings_can_be_read(name, tmp_path):
    """Settings are read by the command that needs them, not by `main`: a bad variable or no
    service at all never stands between a user and a command's --help."""
    env = {"MOODWATCH_WEB_PORT": "http", "MOODWATCH_HOME": str(tmp_path / "nowhere")}
    r = CliRunner().invoke(main, [*name.split(), "--help"], env=env)
    assert r.exit_code == 0, r.output
    assert "Example:" in r.output


def test_the_decision_table_lines_up_candidate_and_current():
    from trainer.report import decision_table

    figures = {"accuracy": 0.9, "f1": 0.875, "ece": 0.05, "n": 40}
    decision = {"candidate": figures, "current": {**figures, "accuracy": 0.8}, "reason": "promoted: better"}
    header, candidate, current, reason = decision_table(decision, "v2-default", "v1-default").splitlines()
    assert candidate.split() == ["candidate", "v2-default", "0.900", "0.875", "0.050", "40"]
    assert current.split() == ["current", "v1-default", "0.800", "0.875", "0.050", "40"]
    assert header.index("accuracy") + len("accuracy") == candidate.index("0.900") + len("0.900")
    assert reason == "promoted: better"
    # No current version: the candidate alone, then the reason.
    alone = decision_table({"candidate": figures, "current": None, "reason": "first"}, "v1", None)
    assert len(alone.splitlines()) == 3
