"""What a user sees on the pages and in the API's description: no placeholder operation names,
a meaning and an example for every parameter and field, times with their zone, an empty table
that says so, long version names on one line, and a bad label named in words."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.repository import insert_results
from moodwatch.outcome import Outcome
from moodwatch.settings import Settings
from moodwatch_app.cli import main
from tests.imagegen import face_like, write_image
from web.app import create_app

LONG = "v20261129T174400800611-default-faces-with-a-much-longer-experiment-name-than-fits"
AT = datetime(2026, 1, 15, 12, 0, 5, tzinfo=UTC)  # winter: Paris is UTC+1, CET


@pytest.fixture
def site(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models",
                        local_model_dir=tmp_path / "models", database_url=url,
                        broker_url="redis://127.0.0.1:1/0")
    (tmp_path / "models").mkdir()
    upgrade(url)
    photo = write_image(settings.processed_dir / "happy" / "p.jpg", face_like("happy", 1))
    with make_sessionmaker(make_engine(url))() as s, s.begin():
        insert_results(s, [Outcome.new("e1", str(settings.inbox_dir / "p.jpg"), AT, stored_path=str(photo),
                                       status="classified", label="happy", confidence=0.9, score=0.1,
                                       model_version=LONG, classified_at=AT)])
    client = TestClient(create_app(settings))
    yield client, settings
    client.close()


@pytest.fixture
def paris(monkeypatch):
    """The server's local time zone is Paris for this test (the pages show local time)."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _title_cased(name: str) -> str:
    """FastAPI's placeholder summary: the function's name, title-cased ("Api Stats")."""
    return name.replace("_", " ").title()


def test_every_operation_has_a_summary_and_every_parameter_a_meaning_and_an_example(site):
    client, _ = site
    schema = client.get("/api/openapi.json").json()
    from web import api

    placeholders = {_title_cased(r.endpoint.__name__) for r in api.router.routes}
    operations = [(path, op) for path, methods in schema["paths"].items() for op in methods.values()]
    assert len(operations) == 4
    for path, op in operations:
        assert op.get("summary") and op["summary"] not in placeholders, (path, op.get("summary"))
        assert op.get("description"), path
        for p in op.get("parameters", []):
            assert p.get("description"), (path, p["name"])
            assert p.get("schema", {}).get("examples") or p.get("example") is not None, (path, p["name"])


def test_every_field_of_every_answer_says_what_it_means(site):
    client, _ = site
    components = client.get("/api/openapi.json").json()["components"]["schemas"]
    ours = {"ResultOut", "Stats", "ModelsOut", "VersionOut", "VersionMetrics", "Agreement", "RunOut"}
    assert ours <= set(components)
    for name in ours:
        for field, spec in components[name]["properties"].items():
            assert spec.get("description"), f"{name}.{field}"
    responses = client.get("/api/openapi.json").json()["paths"]["/api/results"]["get"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["items"]["$ref"].endswith("ResultOut")
    assert "X-Next-Before" in responses["200"]["headers"]


def test_the_docs_page_shows_summaries_and_examples(site):
    client, _ = site
    page = client.get("/api/docs").text
    assert "List results, newest first" in page and "Api Stats" not in page
    assert "<code>happy</code>" in page  # the example of `label`


def test_api_times_are_utc_with_their_offset(site):
    client, _ = site
    row = client.get("/api/results").json()[0]
    assert row["received_at"] == "2026-01-15T12:00:05+00:00"
    assert row["classified_at"] == "2026-01-15T12:00:05+00:00" and row["reviewed_at"] is None
    assert datetime.fromisoformat(row["received_at"]) == AT


def test_pages_show_local_time_with_its_zone(site, paris):
    client, _ = site
    gallery = client.get("/").text
    assert "2026-01-15 13:00:05 CET" in gallery
    detail = client.get("/results/1").text
    assert "<td>2026-01-15 13:00:05 CET</td>" in detail
    assert "2026-01-15 12:00:05" not in gallery + detail  # no UTC time passed off as local


def test_models_page_says_none_yet_when_there_is_nothing(site):
    client, _ = site
    page = client.get("/models").text
    runs = page.split('id="runs"', 1)[1].split("</table>", 1)[0]
    assert re.search(r"<td colspan=\"5\">none yet</td>", runs)
    versions = page.split('id="versions"', 1)[1].split("</table>", 1)[0]
    assert "none yet" in versions


def test_training_runs_show_local_time_and_their_version_on_one_line(site, paris):
    client, settings = site
    from moodwatch.registry import Registry

    registry = Registry.for_settings(settings)
    run = {"at": "2026-01-15T12:00:05+00:00", "outcome": "trained", "version": LONG, "test_n": 30}
    (registry.root / "runs.jsonl").write_text(json.dumps(run) + "\n")  # as record_run writes it
    runs = client.get("/models").text.split('id="runs"', 1)[1].split("</table>", 1)[0]
    assert "2026-01-15 13:00:05 CET" in runs and "none yet" not in runs
    assert f'<span class="oneline" title="{LONG}">{LONG}</span>' in runs


def test_long_version_names_stay_on_one_line_with_the_whole_name_as_title(site):
    client, _ = site
    page = client.get("/").text
    card = page.split('class="card"', 1)[1].split('<div class="card"', 1)[0]
    assert f'class="oneline version" title="{LONG}"' in card
    css = re.search(r"\.oneline \{([^}]*)\}", page).group(1)
    for rule in ("white-space: nowrap", "overflow: hidden", "text-overflow: ellipsis"):
        assert rule in css
    assert ".card" in page and "overflow-wrap: anywhere" in page  # file names may still wrap


def test_a_bad_label_is_one_line_naming_both_choices(tmp_path):
    photo = write_image(tmp_path / "p.jpg", face_like("happy", 2))
    result = CliRunner().invoke(main, ["label", str(photo), "angry"],
                                env={"MOODWATCH_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "'happy'" in lines[0] and "'sad'" in lines[0] and "'angry'" in lines[0]
    assert "{happy|sad}" not in lines[0]
    assert not (tmp_path / "data" / "happy").exists()
