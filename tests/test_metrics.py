"""The web service's /metrics: what Prometheus reads, behind the same checks as every page."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import redis
from fastapi.testclient import TestClient

from db.migrate import open_database
from db.repository import insert_results
from moodwatch import heartbeat, metrics
from moodwatch.outcome import Outcome
from moodwatch.queue import CLASSIFY_QUEUE
from moodwatch.registry import Registry
from moodwatch.settings import Settings
from web.app import create_app

TOKEN = "a-token-of-twenty-chars"


def _settings(tmp_path, broker: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models", broker_url=broker,
                    database_url=f"sqlite:///{tmp_path / 'r.db'}")


def _value(page: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", page, re.M)
    assert match, f"{series} not in:\n{page}"
    return float(match.group(1))


def test_web_metrics_show_rows_queue_bytes_and_every_worker_model(tmp_path, redis_url):
    settings = _settings(tmp_path, redis_url)
    (tmp_path / "models").mkdir()
    Registry(tmp_path / "models").promote(Registry(tmp_path / "models").new_version_dir("x"))
    now = datetime.now(UTC)
    with open_database(settings.database).begin() as session:
        insert_results(session, [
            Outcome.new("e1", "/in/a.jpg", now, status="classified", label="happy", confidence=0.9),
            Outcome.new("e2", "/in/b.jpg", now, status="classified", label="sad", confidence=0.8),
            Outcome.new("e3", "/in/c.txt", now, status="rejected", error="not an image"),
        ])
    client = redis.Redis.from_url(redis_url)
    client.rpush(CLASSIFY_QUEUE, "job1", "job2")
    heartbeat.write(client, heartbeat.Beat(host="node-b", pid=41, worker_pid=40, state="ready",
                                           model="v1-remote", at=time.time() - 3))

    page = TestClient(create_app(settings)).get("/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    text = page.text
    assert _value(text, 'moodwatch_results{status="classified"}') == 2
    assert _value(text, 'moodwatch_results{status="rejected"}') == 1
    assert _value(text, 'moodwatch_results{status="failed"}') == 0
    assert _value(text, 'moodwatch_queue_length{queue="classify"}') == 2
    assert _value(text, "moodwatch_bytes_in_flight") == 0  # the shared transport holds no bytes
    assert _value(text, "moodwatch_broker_up") == 1
    current = Registry(tmp_path / "models").current_name()
    assert _value(text, f'moodwatch_current_model{{version="{current}"}}') == 1
    serving = 'moodwatch_worker_serving{host="node-b",pid="41",state="ready",version="v1-remote"}'
    assert _value(text, serving) == 1
    assert 2 <= _value(text, 'moodwatch_worker_heartbeat_age_seconds{host="node-b",pid="41"}') < 60
    client.close()


def test_web_metrics_keep_the_token_and_host_checks(tmp_path, redis_url):
    app = create_app(_settings(tmp_path, redis_url), token=TOKEN, host="127.0.0.1")
    web = TestClient(app, base_url="http://127.0.0.1")
    assert web.get("/metrics").status_code == 401
    assert web.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    rebound = web.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", "Host": "evil.example"})
    assert rebound.status_code == 400


def test_web_metrics_answer_with_the_broker_down(tmp_path):
    """A scrape must not fail for a broker away: it says so in a figure, and the rows still come."""
    settings = _settings(tmp_path, "redis://127.0.0.1:1/0")
    text = TestClient(create_app(settings)).get("/metrics").text
    assert _value(text, "moodwatch_broker_up") == 0
    assert _value(text, 'moodwatch_results{status="classified"}') == 0


def test_a_batch_is_counted_by_outcome_size_time_and_wait():
    before = {s: _counter(s) for s in ("classified", "rejected")}
    waits = metrics.DROP_TO_ROW.collect()[0]
    count_before = _sample(waits, "moodwatch_drop_to_row_seconds_count")
    received = datetime.now(UTC).isoformat()
    items = [{"event_id": str(i), "path": f"/in/{i}.jpg", "received_at": received} for i in range(4)]
    metrics.observe_batch(items, {"classified": 2, "rejected": 1, "retried": 1}, 0.4)
    assert _counter("classified") == before["classified"] + 2
    assert _counter("rejected") == before["rejected"] + 1
    # Three rows were written: three waits, not four (the retried file has no row yet).
    after = _sample(metrics.DROP_TO_ROW.collect()[0], "moodwatch_drop_to_row_seconds_count")
    assert after == count_before + 3


def test_the_model_series_follows_a_hot_reload():
    served = ["v1"]
    state = metrics.tracking_model(lambda: ("ready", served[0], None))
    state()
    served[0] = "v2"
    state()
    values = {s.labels["version"]: s.value for s in metrics.WORKER_MODEL.collect()[0].samples
              if s.labels["host"] == heartbeat.this_host()}
    assert values["v1"] == 0 and values["v2"] == 1


def _counter(status: str) -> float:
    return _sample(metrics.FILES.collect()[0], "moodwatch_files_total", status=status)


def _sample(family, name: str, **labels: str) -> float:
    return sum(s.value for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_bytes_in_flight_are_the_claims_the_broker_holds(tmp_path, redis_url):
    from moodwatch.jobs import CLAIM_PREFIX

    settings = _settings(tmp_path, redis_url).model_copy(update={"transport": "broker"})
    client = redis.Redis.from_url(redis_url)
    client.set(f"{CLAIM_PREFIX}a", b"x" * 1000, ex=60)
    client.set(f"{CLAIM_PREFIX}b", b"y" * 24, ex=60)
    text = TestClient(create_app(settings)).get("/metrics").text
    assert _value(text, "moodwatch_bytes_in_flight") == 1024
    client.close()
