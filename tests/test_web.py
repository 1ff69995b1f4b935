"""The review page and API through FastAPI's test client, over a real database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.repository import insert_results
from moodwatch.outcome import Outcome
from moodwatch.settings import Settings
from tests.imagegen import face_like, write_image
from web.app import create_app

XSS = "<img src=x onerror=alert(1)>.jpg"


@pytest.fixture
def site(tmp_path, db_url, tiny_model_dir):
    settings = Settings(data_dir=tmp_path / "data", model_dir=tiny_model_dir, database_url=db_url,
                        broker_url="redis://127.0.0.1:1/0")  # no broker: the strip says so
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    now = datetime.now(UTC)
    rows = []
    for i in range(130):
        label = "happy" if i % 2 else "sad"
        name = XSS if i == 7 else f"p{i}.jpg"
        path = write_image(settings.processed_dir / label / f"p{i}.jpg", face_like(label, i))
        rows.append(Outcome.new(f"e{i}", str(settings.inbox_dir / name), now - timedelta(days=i % 5),
                                file_name=name, stored_path=str(path), status="classified", label=label,
                                confidence=0.5 + (i % 50) / 100, score=0.3, model_version="v-test",
                                classified_at=now))
    rows.append(Outcome.new("bad", str(settings.inbox_dir / "bad.jpg"), now, status="rejected",
                            error="not a JPEG, PNG or BMP image", classified_at=now))
    with sessions() as s, s.begin():
        insert_results(s, rows)
    client = TestClient(create_app(settings))
    yield client, settings, sessions
    client.close()


def _csrf(client: TestClient, page: str = "/review") -> str:
    html = client.get(page).text
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_gallery_filters_and_paging(site):
    client, settings, _ = site
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.text.count('class="card"') == 48
    nxt = re.search(r'id="next" href="([^"]+)"', r.text).group(1).replace("&amp;", "&")
    page2 = client.get(nxt)
    ids1 = set(re.findall(r'href="/results/(\d+)"', r.text))
    ids2 = set(re.findall(r'href="/results/(\d+)"', page2.text))
    assert ids1 and ids2 and not ids1 & ids2
    sad = client.get("/", params={"label": "sad"}).text
    assert 'data-label="happy"' not in sad and 'data-label="sad"' in sad
    api = client.get("/api/results", params={"label": "happy", "min_conf": 0.9, "limit": 1000}).json()
    assert api and all(x["label"] == "happy" and x["confidence"] >= 0.9 for x in api)
    assert client.get("/api/results", params={"status": "rejected"}).json()[0]["error"]
    since = (datetime.now(UTC) - timedelta(days=1, hours=1)).date().isoformat()
    recent = client.get("/api/results", params={"since": since, "limit": 1000}).json()
    assert 0 < len(recent) < 131
    assert client.get("/api/results", params={"label": "angry"}).status_code == 422
    stats = client.get("/api/stats").json()
    assert stats["total"] == 131 and stats["by_label"] == {"happy": 65, "sad": 65}
    assert client.get("/api/openapi.json").json()["paths"]["/api/results"]


def test_review_flow_label_relabel_copy_not_move(site):
    client, settings, sessions = site
    page = client.get("/review").text
    first_id = re.search(r'id="r(\d+)"', page).group(1)
    row = client.get("/api/results", params={"limit": 1000}).json()
    stored = next(x for x in row if str(x["id"]) == first_id)["stored_path"]
    assert next(x for x in row if str(x["id"]) == first_id)["confidence"] == 0.5  # least confident first
    token = _csrf(client)
    r = client.post(f"/review/{first_id}", data={"choice": "happy", "csrf": token}, follow_redirects=False)
    assert r.status_code == 303
    copies = list((settings.data_dir / "happy").iterdir())
    assert len(copies) == 1 and copies[0].read_bytes() == Path(stored).read_bytes()
    assert Path(stored).is_file()  # copied, not moved
    detail = client.get("/api/results", params={"limit": 1000}).json()
    assert next(x for x in detail if str(x["id"]) == first_id)["human_label"] == "happy"
    assert f'id="r{first_id}"' not in client.get("/review").text  # reviewed: off the queue
    # Choosing again moves the copy to the other label; nothing is deleted.
    client.post(f"/review/{first_id}", data={"choice": "sad", "csrf": token})
    assert not list((settings.data_dir / "happy").iterdir())
    assert len(list((settings.data_dir / "sad").iterdir())) == 1
    models = client.get("/api/models").json()
    assert models["versions"] and "runs" in models


def test_post_without_csrf_is_refused(site):
    client, _, _ = site
    r = client.post("/review/1", data={"choice": "happy", "csrf": "forged"})
    assert r.status_code == 403
    assert client.get("/review/1").status_code == 405  # state changes are POST only


def test_unknown_ids_and_traversal_are_404(site):
    client, _, _ = site
    for url in ["/results/999999", "/thumb/999999", "/image/999999", "/plots/../../etc/loss.png",
                "/plots/v-nope/loss.png", "/plots/..%2F..%2Fetc/passwd", "/thumb/..%2F..%2Fetc%2Fpasswd"]:
        assert client.get(url).status_code in (404, 422), url
    rejected_id = client.get("/api/results", params={"status": "rejected"}).json()[0]["id"]
    assert client.get(f"/image/{rejected_id}").status_code == 404


def test_images_only_from_owned_folders(site, tmp_path):
    client, settings, sessions = site
    outside = write_image(tmp_path / "elsewhere" / "secret.jpg", face_like("sad", 1))
    with sessions() as s, s.begin():
        insert_results(s, [Outcome.new("out", str(outside), datetime.now(UTC), stored_path=str(outside),
                                       status="classified", label="sad", confidence=0.9)])
    rid = client.get("/api/results", params={"limit": 1}).json()[0]["id"]
    assert client.get(f"/image/{rid}").status_code == 404
    assert client.get(f"/thumb/{rid}").status_code == 404
    ok = client.get("/api/results", params={"label": "happy", "limit": 1}).json()[0]["id"]
    img = client.get(f"/image/{ok}")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    th = client.get(f"/thumb/{ok}")
    assert th.status_code == 200 and th.content[:2] == b"\xff\xd8"
    assert (settings.data_dir / ".thumbs" / f"{ok}.jpg").is_file()  # cached


def test_file_names_are_escaped(site):
    client, _, _ = site
    for url in ["/", "/review", "/results/8"]:
        html = client.get(url).text
        assert "<img src=x onerror" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in client.get("/results/8").text


def test_token_required_when_configured(tmp_path, sqlite_url, tiny_model_dir):
    settings = Settings(data_dir=tmp_path / "d", model_dir=tiny_model_dir, database_url=sqlite_url,
                        broker_url="redis://127.0.0.1:1/0")
    client = TestClient(create_app(settings, token="s3cret"))
    assert client.get("/").status_code == 401
    assert client.get("/api/stats").status_code == 401
    assert client.get("/api/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/", params={"token": "s3cret"}).status_code == 200
    assert client.get("/api/stats").status_code == 200  # the cookie set by ?token= carries on


def test_web_refuses_public_bind_without_token(tmp_path):
    from click.testing import CliRunner

    from moodwatch_app.cli import main

    result = CliRunner().invoke(main, ["web", "--host", "0.0.0.0"], env={"MOODWATCH_WEB_TOKEN": ""})
    assert result.exit_code != 0 and "MOODWATCH_WEB_TOKEN" in result.output


def test_detail_draws_the_face_boxes_the_model_used(site):
    client, settings, sessions = site
    path = write_image(settings.processed_dir / "happy" / "group.jpg", face_like("happy", 77, 300))
    with sessions() as s, s.begin():
        insert_results(s, [Outcome.new("faces", str(path), datetime.now(UTC), stored_path=str(path),
                                       status="classified", label="happy", confidence=0.8,
                                       faces=[[0.1, 0.2, 0.3, 0.25], [0.6, 0.1, 0.1, 0.1]])])
    rid = client.get("/api/results", params={"limit": 1}).json()[0]["id"]
    html = client.get(f"/results/{rid}").text
    assert html.count('class="facebox"') == 2 and "left: 10.0%" in html and "2 face(s)" in html


def test_models_page_api_and_cli_name_the_architecture_the_same_way(tmp_path, sqlite_url):
    import json

    from click.testing import CliRunner

    from moodwatch import settings as settings_module
    from moodwatch_app.cli import main

    models = tmp_path / "models"
    for name, params in (("v1-faces", {"architecture": "default", "faces": True}),
                         ("v2-whole", {"architecture": "seed"})):
        (models / name).mkdir(parents=True)
        (models / name / "model.keras").write_bytes(b"")
        (models / name / "params.json").write_text(json.dumps(params))
    settings = Settings(data_dir=tmp_path / "data", model_dir=models, database_url=sqlite_url,
                        broker_url="redis://127.0.0.1:1/0")
    upgrade(sqlite_url)
    with TestClient(create_app(settings)) as client:
        page = client.get("/models").text
        api = {v["version"]: v["architecture"] for v in client.get("/api/models").json()["versions"]}
    settings_module.get_settings.cache_clear()
    cli = CliRunner().invoke(main, ["models", "--json"], env={"MOODWATCH_MODEL_DIR": str(models)}).output
    settings_module.get_settings.cache_clear()
    cli_names = {v["version"]: v["architecture"] for v in json.loads(cli)["versions"]}
    assert api == cli_names == {"v1-faces": "default+faces", "v2-whole": "seed"}
    assert "<td>default+faces</td>" in page and "<td>seed</td>" in page


def _newest_id(sessions) -> int:
    from sqlalchemy import func, select

    from db.models import Result

    with sessions() as s:
        return s.scalar(select(func.max(Result.id)))


def test_gallery_has_no_broken_thumbnails_and_every_card_links_somewhere(site, tmp_path):
    client, settings, sessions = site
    outside = write_image(tmp_path / "elsewhere" / "submitted.jpg", face_like("sad", 5))
    now = datetime.now(UTC) + timedelta(minutes=1)  # newest: on the first page
    with sessions() as s, s.begin():
        insert_results(s, [
            Outcome.new("out", str(outside), now, status="classified", label="sad", confidence=0.7),
            Outcome.new("fail", "/mnt/gone/lost.jpg", now, status="failed",
                        error="file not found: /mnt/gone/lost.jpg"),
        ])
    html = client.get("/").text
    for rid in re.findall(r'src="/thumb/(\d+)"', html):
        assert client.get(f"/thumb/{rid}").status_code == 200, f"broken thumbnail for #{rid}"
    assert "submitted.jpg" in html and "lost.jpg" in html
    assert not re.search(r'<a href="/results/\d+">\s*</a>', html), "a card whose link shows nothing"


def test_failed_rows_are_listed_with_the_rejected(site):
    client, _settings, sessions = site
    with sessions() as s, s.begin():
        insert_results(s, [Outcome.new("fail2", "/mnt/gone/failed.jpg", datetime.now(UTC), status="failed",
                                       error="cannot read file: Input/output error")])
    html = client.get("/rejected").text
    assert "failed.jpg" in html and "Input/output error" in html and "bad.jpg" in html
    assert f'href="/results/{_newest_id(sessions)}"' in html


def test_a_duplicate_shows_the_face_boxes_of_its_original(site):
    client, settings, sessions = site
    path = write_image(settings.processed_dir / "happy" / "orig.jpg", face_like("happy", 78, 300))
    twin = write_image(settings.processed_dir / "happy" / "twin.jpg", face_like("happy", 78, 300))
    now = datetime.now(UTC)
    with sessions() as s, s.begin():
        insert_results(s, [Outcome.new("orig", str(path), now, status="classified", label="happy",
                                       confidence=0.8, faces=[[0.1, 0.2, 0.3, 0.25]])])
    first = _newest_id(sessions)
    with sessions() as s, s.begin():
        insert_results(s, [Outcome.new("twin", str(twin), now, status="classified", label="happy",
                                       confidence=0.8, duplicate_of=first)])
    html = client.get(f"/results/{_newest_id(sessions)}").text
    assert html.count('class="facebox"') == 1 and "reads the whole image only" not in html


def test_api_pages_are_capped_and_the_export_streams(site):
    import csv
    import io

    client, settings, sessions = site
    now = datetime.now(UTC)
    with sessions() as s, s.begin():
        insert_results(s, [Outcome.new(f"bulk{i}", f"/in/b{i}.jpg", now, status="classified", label="sad",
                                       confidence=0.7) for i in range(2500)])
    assert client.get("/api/results", params={"limit": 0}).status_code == 422  # no "everything"
    assert client.get("/api/results", params={"limit": 5000}).status_code == 422
    assert len(client.get("/api/results").json()) == 50
    seen: list[int] = []
    params: dict = {"limit": 1000}
    while True:
        r = client.get("/api/results", params=params)
        assert r.status_code == 200 and len(r.json()) <= 1000
        seen += [x["id"] for x in r.json()]
        if "x-next-before" not in r.headers:
            break
        params["before"] = r.headers["x-next-before"]
    assert len(seen) == len(set(seen)) == 2631 and seen == sorted(seen, reverse=True)
    export = client.get("/api/results.csv", params={"label": "sad"})
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(export.text)))
    assert len(lines) == 2565 and {x["label"] for x in lines} == {"sad"}


def test_out_of_range_ids_are_a_clear_400_or_404(site):
    client, _, _ = site
    huge = "9223372036854775808"
    for url in [f"/api/results?before={huge}", f"/?before={huge}", f"/rejected?before={huge}",
                "/api/results?before=-1"]:
        assert client.get(url).status_code == 400, url
    for url in [f"/results/{huge}", f"/thumb/{huge}", f"/image/{huge}"]:
        assert client.get(url).status_code == 404, url


def test_reviewing_a_row_that_is_not_a_usable_photo_is_a_clear_4xx(site):
    client, settings, sessions = site
    text = settings.processed_dir / "happy" / "text.jpg"
    text.write_text("not an image")
    now = datetime.now(UTC)
    with sessions() as s, s.begin():
        insert_results(s, [Outcome.new("txt", str(text), now, stored_path=str(text), status="classified",
                                       label="happy", confidence=0.6)])
    rid = client.get("/api/results", params={"limit": 1}).json()[0]["id"]
    rejected = client.get("/api/results", params={"status": "rejected"}).json()[0]["id"]
    token = _csrf(client)
    r = client.post(f"/review/{rid}", data={"choice": "sad", "csrf": token})
    assert r.status_code == 422 and "image" in r.text
    r = client.post(f"/review/{rejected}", data={"choice": "sad", "csrf": token})
    assert r.status_code == 409 and "classified" in r.text
    assert not list((settings.data_dir / "sad").glob("*"))


def test_a_csrf_token_the_client_chose_is_refused(site):
    client, _, _ = site
    client.cookies.set("mw_csrf", "chosen-by-the-client")
    r = client.post("/review/1", data={"choice": "skip", "csrf": "chosen-by-the-client"})
    assert r.status_code == 403
    client.cookies.clear()
    assert client.post("/review/1", data={"choice": "skip", "csrf": _csrf(client)},
                       follow_redirects=False).status_code == 303


def test_api_docs_load_nothing_from_elsewhere(site):
    client, _, _ = site
    r = client.get("/api/docs")
    assert r.status_code == 200
    assert "<script" not in r.text and "cdn" not in r.text.lower() and "http" not in r.text.replace(
        "http://testserver", "")
    assert "/api/results" in r.text and "/api/openapi.json" in r.text


def test_web_refuses_a_weak_token_off_loopback(monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    from moodwatch import settings as settings_module
    from moodwatch_app.cli import main

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append(k))
    settings_module.get_settings.cache_clear()
    weak = CliRunner().invoke(main, ["web", "--host", "0.0.0.0"], env={"MOODWATCH_WEB_TOKEN": "s3cret"})
    settings_module.get_settings.cache_clear()
    assert weak.exit_code != 0 and "16" in weak.output and not served


def test_status_strip_names_the_error_it_met(site, monkeypatch):
    """A failure that is not the broker's is not called "broker unreachable"; it is named."""
    client, _settings, _ = site
    import moodwatch.status

    def corrupt(self):
        raise ValueError("models/CURRENT names no version")

    monkeypatch.setattr(moodwatch.status.Registry, "current_name", corrupt)
    html = client.get("/").text
    strip = re.search(r'<div class="status" id="status">(.*?)</div>', html, re.S).group(1)
    assert "broker" not in strip
    assert "status unavailable: ValueError: models/CURRENT names no version" in strip


def test_status_strip_says_when_the_broker_is_unreachable(site):
    client, _settings, _ = site
    strip = re.search(r'<div class="status" id="status">(.*?)</div>', client.get("/").text, re.S).group(1)
    assert "broker unreachable: ConnectionError" in strip
