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
from db.repository import insert_results, result_row
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
    rows = []
    for i in range(30):
        label = "happy" if i % 3 else "sad"
        path = write_image(data / "processed" / label / f"photo_{i}.jpg", face_like(label, i, 160))
        rows.append(result_row(f"e{i}", str(data / "inbox" / path.name), now - timedelta(minutes=i),
                               stored_path=str(path), status="classified", label=label,
                               confidence=0.52 + i / 64, score=0.4, model_version="v-demo",
                               classified_at=now, processing_ms=4.2))
    rows.append(result_row("bad", str(data / "inbox" / "notes.jpg"), now, status="rejected",
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
