"""A real headless Chromium (Debian's, driven by Playwright) against a real `moodwatch web`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.repository import insert_results
from moodwatch.outcome import Outcome
from moodwatch.registry import Registry
from tests.conftest import missing
from tests.imagegen import face_like, write_image
from tests.procs import ROOT, service_env, stop, wait_for

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        missing("Debian's chromium is not installed (apt-get install chromium; CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def web_site(tmp_path, tiny_model_dir):
    from moodwatch.broker import embedded_url, start_embedded

    broker = start_embedded(tmp_path / "redis" / "redis.db")
    data = tmp_path / "data"
    url = f"sqlite:///{data / 'moodwatch.db'}"
    data.mkdir()
    upgrade(url)
    now = datetime.now(UTC)
    version = Registry(tiny_model_dir).current_name()
    rows = []
    for i in range(30):
        label = "happy" if i % 3 else "sad"
        path = write_image(data / "processed" / label / f"photo_{i}.jpg", face_like(label, i, 160))
        # Spread over the last 18 hours, and a dozen reviewed: the stats chart and the models
        # page's calibration plot have something to draw.
        reviewed = {"human_label": label if i % 4 else ("sad" if label == "happy" else "happy"),
                    "reviewed_at": now} if i % 5 < 2 else {}
        rows.append(Outcome.new(f"e{i}", str(data / "inbox" / path.name), now - timedelta(minutes=i * 37),
                                stored_path=str(path), status="classified", label=label,
                                confidence=0.52 + i / 64, score=0.4, model_version=version,
                                classified_at=now - timedelta(minutes=i * 37), processing_ms=4.2,
                                **reviewed))
    rows.append(Outcome.new("bad", str(data / "inbox" / "notes.jpg"), now, status="rejected",
                            error="not a JPEG, PNG or BMP image (its bytes have no image signature)",
                            classified_at=now, stored_path=str(data / "rejected" / "notes.jpg")))
    with make_sessionmaker(make_engine(url))() as s, s.begin():
        insert_results(s, rows)
    port = _free_port()
    env = service_env(data_dir=data, model_dir=tiny_model_dir, database_url=url,
                      broker_url=embedded_url(broker))
    log = tmp_path / "web.log"
    proc = subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "web", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(up, 60, "moodwatch web", log)
    yield f"http://127.0.0.1:{port}", data
    stop(proc)
    broker.shutdown()


def test_gallery_filter_and_review_in_a_real_browser(browser, web_site):
    base, data = web_site
    shots = os.environ.get("MOODWATCH_SCREENSHOTS")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(base + "/")
    assert page.locator(".card").count() == 31
    assert "queue: 0" in page.locator("#status").inner_text()
    if shots:
        page.screenshot(path=str(Path(shots) / "gallery.png"))
    page.select_option("#f-label", "sad")
    page.click("#apply")
    page.wait_for_url("**label=sad**")
    labels = page.locator(".card").evaluate_all("els => els.map(e => e.dataset.label)")
    assert labels and set(labels) == {"sad"}

    page.goto(base + "/review")
    first = page.locator("#review .card").first
    name = first.locator(".name").inner_text()
    if shots:
        page.screenshot(path=str(Path(shots) / "review.png"))
    first.locator("button[value=happy]").click()
    page.wait_for_load_state()
    assert (data / "happy" / name).is_file()
    assert any((data / "processed").rglob(name))  # copied, not moved
    assert page.locator(f"text={name}").count() == 0  # reviewed: off the queue
    page.close()


def test_stats_chart_and_models_page_in_a_real_browser(browser, web_site):
    """The stats page's inline SVG draws one visible bar per hour and label, and per confidence
    band and label, with photos; the models page shows each version's calibration plot."""
    from web.charts import CONFIDENCE_BANDS

    base, data = web_site
    shots = os.environ.get("MOODWATCH_SCREENSHOTS")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(base + "/stats")
    chart = page.locator("#stats-chart svg")
    assert chart.is_visible() and chart.bounding_box()["width"] > 600
    assert "31" in page.locator("#counts").inner_text()  # 30 classified, 1 rejected
    confs = [0.52 + i / 64 for i in range(30)]
    labels = ["happy" if i % 3 else "sad" for i in range(30)]
    bands = {(label, next((k for k, (_, hi) in enumerate(CONFIDENCE_BANDS[:-1]) if c < hi),
                          len(CONFIDENCE_BANDS) - 1)) for c, label in zip(confs, labels, strict=True)}
    bars = page.locator("#stats-chart g[id^=conf-]")
    assert bars.count() == len(bands)
    assert all(box and box["height"] > 0 for box in (bars.nth(k).bounding_box() for k in range(bars.count())))
    assert page.locator("#stats-chart g[id^=hour-]").count() >= 10  # 30 photos over 18 hours
    if shots:
        page.screenshot(path=str(Path(shots) / "stats.png"), full_page=True)

    page.goto(base + "/models")
    assert page.locator("#versions tr").count() == 2  # the header and the tiny model
    # No run in this data folder's registry: the table says so instead of standing empty.
    assert page.locator("#runs td").inner_text() == "none yet"
    plot = page.locator("#calibration img").first
    plot.scroll_into_view_if_needed()
    page.wait_for_function("() => [...document.querySelectorAll('#calibration img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    name = page.locator("#calibration .oneline").first
    assert name.evaluate("e => getComputedStyle(e).whiteSpace") == "nowrap"
    assert name.get_attribute("title") and name.bounding_box()["height"] < 30  # one line
    if shots:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(Path(shots) / "models.png"), full_page=True)
    page.close()
