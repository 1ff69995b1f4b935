"""The stats chart (per hour by label, confidence histogram) and the calibration plots: counted
in SQL on SQLite and PostgreSQL, drawn as SVG with one bar per non-empty count, and written as
a PNG by `moodwatch stats --chart`."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.repository import insert_results
from moodwatch import settings as settings_module
from moodwatch.outcome import Outcome
from moodwatch.settings import Settings
from moodwatch_app.cli import main
from web.app import create_app

SVG_NS = "{http://www.w3.org/2000/svg}"
# A fixed "now", 40 minutes into an hour: the hour buckets are known exactly.
NOW = datetime(2026, 11, 29, 14, 40, tzinfo=UTC)
REVIEWED = "v20261101T000000000000-default"  # a version with no per-band figures
BANDED = "v20261102T000000000000-default"  # a version whose metrics have them


def _row(n: int, label: str | None, confidence: float | None, at: datetime, status: str = "classified",
         **kw) -> Outcome:
    return Outcome.new(f"ev{n}", f"/inbox/p{n}.jpg", at, status=status, label=label, confidence=confidence,
                       classified_at=at, model_version=kw.pop("model", REVIEWED), **kw)


# What the rows below must draw. Hours count back from NOW's hour (index 23).
ROWS = [
    _row(1, "happy", 0.97, NOW - timedelta(minutes=5)),   # hour 23, band 9
    _row(2, "happy", 0.96, NOW - timedelta(minutes=30)),  # hour 23, band 9
    _row(3, "sad", 0.52, NOW - timedelta(minutes=10)),    # hour 23, band 0
    _row(4, "sad", 0.81, NOW - timedelta(hours=2)),       # hour 21, band 6
    _row(5, "happy", 1.0, NOW - timedelta(hours=23)),     # hour 0, band 9 (1.0 is in the last band)
    _row(6, "happy", 0.74, NOW - timedelta(hours=30)),    # before the window; band 4
    _row(7, None, None, NOW, status="rejected", error="not an image"),  # no bar at all
]
HOUR_BARS = {"hour-happy-23", "hour-sad-23", "hour-sad-21", "hour-happy-0"}
CONF_BARS = {"conf-happy-9", "conf-sad-0", "conf-sad-6", "conf-happy-4"}


@pytest.fixture
def site(tmp_path, db_url):
    models = tmp_path / "models"
    for name, metrics in ((REVIEWED, {"test": {"accuracy": 0.9, "n": 40}}),
                          (BANDED, {"test": {"n": 30, "calibration": [
                              {"band": "0.50-0.60", "n": 4, "mean_confidence": 0.55, "accuracy": 0.5},
                              {"band": "0.60-0.70", "n": 0, "mean_confidence": None, "accuracy": None},
                              {"band": "0.90-0.95", "n": 6, "mean_confidence": 0.93, "accuracy": 0.83},
                              {"band": "0.95-1.00", "n": 20, "mean_confidence": 0.98, "accuracy": 1.0}]}})):
        (models / name).mkdir(parents=True)
        (models / name / "model.keras").write_bytes(b"")  # never loaded: the web reads figures only
        (models / name / "metrics.json").write_text(json.dumps(metrics))
    settings = Settings(data_dir=tmp_path / "data", model_dir=models, local_model_dir=models,
                        database_url=db_url, broker_url="redis://127.0.0.1:1/0")
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    with sessions() as s, s.begin():
        insert_results(s, ROWS)
    client = TestClient(create_app(settings))
    yield client, settings, sessions
    client.close()


def _bars(svg: str, prefix: str) -> set[str]:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    assert root.tag == f"{SVG_NS}svg"
    return {g.get("id") for g in root.iter(f"{SVG_NS}g") if (g.get("id") or "").startswith(prefix)}


def test_the_stats_svg_has_one_bar_per_hour_label_and_band_with_photos(site, monkeypatch):
    client, _, _ = site
    from web import charts

    real = charts.hourly_counts
    monkeypatch.setattr(charts, "hourly_counts", lambda session: real(session, now=NOW))
    r = client.get("/charts/stats.svg")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert _bars(r.text, "hour-") == HOUR_BARS
    assert _bars(r.text, "conf-") == CONF_BARS


def test_counts_per_hour_and_band(site):
    _, _, sessions = site
    from web import charts

    with sessions() as s:
        hourly = charts.hourly_counts(s, now=NOW)
        histogram = charts.confidence_histogram(s)
    assert hourly.start == datetime(2026, 11, 28, 15, tzinfo=UTC)
    assert hourly.counts["happy"][23] == 2 and hourly.counts["sad"][23] == 1
    assert hourly.counts["sad"][21] == 1 and hourly.counts["happy"][0] == 1
    assert sum(hourly.counts["happy"]) + sum(hourly.counts["sad"]) == 5  # the 30-hour-old one is out
    assert histogram["happy"][9] == 3 and histogram["happy"][4] == 1
    assert histogram["sad"][0] == 1 and histogram["sad"][6] == 1
    assert sum(map(sum, histogram.values())) == 6  # every classified row, the rejected one not


def test_the_stats_page_inlines_the_chart_and_the_counts(site):
    client, _, _ = site
    page = client.get("/stats")
    assert page.status_code == 200
    inline = page.text.split('id="stats-chart">', 1)[1]
    assert inline.startswith("<svg") and "<?xml" not in page.text and "<!DOCTYPE svg" not in page.text
    assert _bars(inline[: inline.index("</svg>") + 6], "conf-") == CONF_BARS
    assert "<script" not in page.text
    assert 'href="/stats"' in client.get("/").text  # in the header of every page


def test_calibration_from_the_versions_bands_else_from_reviewed_results(site):
    client, _, sessions = site
    banded = client.get(f"/charts/calibration/{BANDED}.svg")
    assert banded.status_code == 200 and banded.headers["content-type"].startswith("image/svg+xml")
    assert _bars(banded.text, "band-") == {"band-0", "band-2", "band-3"}  # the bands with photos
    assert "30 test photos" in banded.text

    empty = client.get(f"/charts/calibration/{REVIEWED}.svg").text
    assert _bars(empty, "band-") == set() and "no figures yet" in empty
    reviewed = [
        _row(20, "happy", 0.55, NOW, human_label="happy"),   # band 0, right
        _row(21, "happy", 0.58, NOW, human_label="sad"),     # band 0, wrong
        _row(22, "sad", 0.97, NOW, human_label="sad"),       # band 5, right
        _row(23, "sad", 0.85, NOW, human_label="skip"),      # a skip is no verdict
        _row(24, "sad", 0.85, NOW, model="v-other", human_label="happy"),  # another version's
    ]
    with sessions() as s, s.begin():
        insert_results(s, reviewed)
    svg = client.get(f"/charts/calibration/{REVIEWED}.svg").text
    assert _bars(svg, "band-") == {"band-0", "band-5"}
    assert "3 results people reviewed" in svg
    from web import charts

    with sessions() as s:
        cal = charts.calibration_for(s, REVIEWED, {"test": {"n": 40}})
    assert [(b.n, b.accuracy) for b in cal.bands if b.n] == [(2, 0.5), (1, 1.0)]

    assert client.get("/charts/calibration/v-nope.svg").status_code == 404
    models = client.get("/models").text
    assert f'src="/charts/calibration/{BANDED}.svg"' in models
    assert f'src="/charts/calibration/{REVIEWED}.svg"' in models


def test_moodwatch_stats_chart_writes_a_png(site, tmp_path):
    _, settings, _ = site
    settings_module.get_settings.cache_clear()
    out = tmp_path / "stats.png"
    env = {"MOODWATCH_DATA_DIR": str(settings.data_dir), "MOODWATCH_MODEL_DIR": str(settings.model_dir),
           "MOODWATCH_DATABASE_URL": settings.database_url}
    try:
        result = CliRunner().invoke(main, ["stats", "--chart", str(out)], env=env)
        assert result.exit_code == 0, result.output
        assert f"chart: {out}" in result.output and "total rows: 7" in result.output
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        bad = CliRunner().invoke(main, ["stats", "--chart", str(tmp_path / "stats.svg")], env=env)
        assert bad.exit_code == 1 and bad.stderr.startswith("error: ") and "PNG" in bad.stderr
    finally:
        settings_module.get_settings.cache_clear()


def test_the_svg_is_the_same_for_the_same_figures(site):
    client, _, _ = site
    first, second = (client.get(f"/charts/calibration/{BANDED}.svg").text for _ in range(2))
    assert first == second  # no date, no random ids in it: a cache or a diff sees no change
