"""CSV exports never hand a spreadsheet a formula: /api/results.csv and `moodwatch results
--format csv` quote every cell that starts like one, through the one function both use."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from db.engine import make_engine, make_sessionmaker
from db.export import csv_cell
from db.migrate import upgrade
from db.repository import insert_results
from moodwatch import settings as settings_module
from moodwatch.outcome import Outcome
from moodwatch.settings import Settings
from moodwatch_app.cli import main
from web.app import create_app

# Names a person may give a file, each of which a spreadsheet would run or misread.
# (Tab and CR never get this far: rows store control characters escaped, as \x09.)
HOSTILE = ['=HYPERLINK("http:\\\\x","y").jpg', "+cmd|' /C calc'!A0.jpg", "-2+3.jpg", "@SUM(A1).jpg"]
PLAIN = "holiday-2024.jpg"  # a dash inside a name is no formula


@pytest.fixture
def db_with_hostile_names(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    now = datetime.now(UTC)
    rows = [Outcome.new(f"e{i}", str(tmp_path / "inbox" / name), now, file_name=name, status="classified",
                        label="sad", confidence=0.75, score=0.75)
            for i, name in enumerate([*HOSTILE, PLAIN])]
    rows.append(Outcome.new("err", str(tmp_path / "inbox" / "x.jpg"), now, status="failed",
                            error="=1+1 is not an image", classified_at=now))
    with make_sessionmaker(make_engine(url))() as s, s.begin():
        insert_results(s, rows)
    return url


@pytest.fixture(autouse=True)
def fresh_settings():
    settings_module.get_settings.cache_clear()
    yield
    settings_module.get_settings.cache_clear()


def _check(text: str) -> None:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    names = {r["file_name"] for r in rows}
    assert names >= {"'" + n for n in HOSTILE} and PLAIN in names
    assert not any(n.startswith(("=", "+", "-", "@", "\t", "\r")) for n in names)
    assert {r["error"] for r in rows if r["status"] == "failed"} == {"'=1+1 is not an image"}
    assert {r["confidence"] for r in rows if r["status"] == "classified"} == {"0.75"}  # numbers stay


def test_web_export_quotes_formula_cells(tmp_path, db_with_hostile_names):
    settings = Settings(data_dir=tmp_path / "d", model_dir=tmp_path / "models",
                        database_url=db_with_hostile_names, broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        r = client.get("/api/results.csv")
    assert r.status_code == 200
    _check(r.text)


def test_cli_export_quotes_formula_cells(tmp_path, db_with_hostile_names):
    env = {"MOODWATCH_DATABASE_URL": db_with_hostile_names, "MOODWATCH_DATA_DIR": str(tmp_path / "d")}
    r = CliRunner().invoke(main, ["results", "--format", "csv", "--limit", "0"], env=env,
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    _check(r.output)


def test_csv_cell_leaves_other_values_alone():
    assert csv_cell(-0.5) == -0.5 and csv_cell(None) is None and csv_cell("a=b") == "a=b"
    assert [csv_cell(v) for v in ("=x", "\tx", "\rx")] == ["'=x", "'\tx", "'\rx"]


def test_evaluate_csv_quotes_formula_cells(tmp_path):
    """`moodwatch evaluate --csv` writes file names a person chose, and errors that quote them."""
    import csv

    from trainer.report import Evaluated, write_csv

    out = tmp_path / "eval.csv"
    write_csv([Evaluated('=HYPERLINK("http://x","y").jpg', "happy", 0.2, None),
               Evaluated("ok.jpg", "sad", None, "@SUM(1)")], out)
    rows = list(csv.reader(out.open()))
    assert rows[1][0] == '\'=HYPERLINK("http://x","y").jpg' and rows[2][-1] == "'@SUM(1)"
