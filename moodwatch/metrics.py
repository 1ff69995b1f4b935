"""Prometheus metrics: one endpoint per worker node, one on the web service (README, Monitoring).

A worker node's pool processes are forked by Celery (prefork), so they count in
prometheus_client's multiprocess mode: `moodwatch worker --metrics-port N` points
PROMETHEUS_MULTIPROC_DIR at a fresh folder before anything imports prometheus_client (this
module does, so the CLI sets it before importing this), each pool
process writes its figures there, and the node's main process serves their sum on port N. What
lives outside the processes (the queue, the bytes in flight) is read from the broker at each
scrape. The web service's /metrics reads the database, the broker and the workers' heartbeats
(moodwatch.heartbeat), so one scrape there sees every worker node's model.

Without --metrics-port the worker's metrics are plain in-process values nobody reads: cheap.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from moodwatch import heartbeat
from moodwatch.broker import redis_client
from moodwatch.settings import MAX_BATCH_SIZE
from moodwatch.vocab import STATUSES

if TYPE_CHECKING:
    from sqlalchemy.orm import sessionmaker

    from moodwatch.settings import Settings

log = logging.getLogger("moodwatch.metrics")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds from the watcher's receipt of a file to its row: a second when idle, minutes in a drop.
LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
BATCH_SIZE_BUCKETS = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
                           if b < MAX_BATCH_SIZE) + (MAX_BATCH_SIZE, float("inf"))
BATCH_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, float("inf"))

FILES = Counter("moodwatch_files", "Files this worker node recorded, by outcome.", ["status"])
DROP_TO_ROW = Histogram("moodwatch_drop_to_row_seconds",
                        "From the watcher's receipt of a file to its row in the database.",
                        buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("moodwatch_batch_size", "Files per classification job.", buckets=BATCH_SIZE_BUCKETS)
BATCH_SECONDS = Histogram("moodwatch_batch_seconds", "Seconds a classification job took, rows included.",
                          buckets=BATCH_SECONDS_BUCKETS)
# One series per pool process (multiprocess mode adds its pid): 1 for the version it serves,
# 0 for one it served before. liveall: a process that stopped drops out.
WORKER_MODEL = Gauge("moodwatch_worker_model", "The model version a worker process serves (1).",
                     ["version", "host"], multiprocess_mode="liveall")


# ---- the worker's side --------------------------------------------------------------------

def observe_batch(items: list[Any], counts: dict[str, int], seconds: float) -> None:
    """One classification job done: its outcomes, its size and time, and each new row's wait.
    The rows it added are counted by status; the files of one job arrived together, so the
    first that many items stand for them (skipped ones, a redelivery's, had their rows before;
    those handed back have none yet)."""
    BATCH_SIZE.observe(len(items))
    BATCH_SECONDS.observe(seconds)
    recorded = 0
    for status in STATUSES:
        if counts.get(status):
            FILES.labels(status).inc(counts[status])
            recorded += counts[status]
    now = datetime.now(UTC)
    for item in items[:recorded]:
        waited = _waited(item, now)
        if waited is not None:
            DROP_TO_ROW.observe(waited)


def _waited(item: Any, now: datetime) -> float | None:
    try:
        received = datetime.fromisoformat(item["received_at"])
    except (KeyError, TypeError, ValueError):
        return None
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    return max(0.0, (now - received).total_seconds())


def tracking_model(readiness: Callable[[], tuple[str, str | None, str | None]]
                   ) -> Callable[[], tuple[str, str | None, str | None]]:
    """The heartbeat's state function, also setting this process's WORKER_MODEL series: the
    heartbeat asks it twice a second, so a hot reload shows within a second."""
    host = heartbeat.this_host()
    shown: list[str] = []

    def state() -> tuple[str, str | None, str | None]:
        now = readiness()
        model = now[1]
        if model is not None and shown[-1:] != [model]:
            for old in shown:
                WORKER_MODEL.labels(old, host).set(0)
            WORKER_MODEL.labels(model, host).set(1)
            shown.append(model)
        return now

    return state


def mark_dead(pid: int) -> None:
    """A pool process that stops takes its live series with it."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def serve_worker_metrics(settings: Settings, port: int, host: str = "0.0.0.0") -> Any:
    """The worker node's endpoint: its pool processes' figures and the broker's, on port.
    PROMETHEUS_MULTIPROC_DIR must have been set before prometheus_client was imported
    (`moodwatch worker --metrics-port` does)."""
    from prometheus_client import multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(BrokerCollector(settings))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return server


# ---- what the broker and the database say (both endpoints) --------------------------------

def bytes_in_flight(settings: Settings, client: Any) -> int:
    """Bytes of photos held in the broker for their jobs: none when the workers read the inbox
    (MOODWATCH_TRANSPORT=shared); with the broker transport, those under its claim keys."""
    if settings.transport != "broker":
        return 0
    from moodwatch.claims import ClaimStore

    return ClaimStore(client, ttl=0).held()


class BrokerCollector:
    """Queue lengths and bytes in flight, read from the broker at each scrape."""

    def __init__(self, settings: Settings, broker_url: str | None = None):
        self.settings = settings
        self.broker_url = broker_url  # None: the configured one, or the embedded one if it runs

    def collect(self) -> Iterator[Metric]:
        from moodwatch.broker import running_broker_url
        from moodwatch.queue import CLASSIFY_QUEUE, TRAINING_QUEUE

        up = GaugeMetricFamily("moodwatch_broker_up", "1 when the broker answered this scrape.")
        url = self.broker_url or running_broker_url(self.settings)
        if url is None:
            up.add_metric([], 0)
            yield up
            return
        client = redis_client(url)
        try:
            queue = GaugeMetricFamily("moodwatch_queue_length", "Jobs waiting in a queue.", labels=["queue"])
            for name in (CLASSIFY_QUEUE, TRAINING_QUEUE):
                queue.add_metric([name], client.llen(name))
            held = GaugeMetricFamily("moodwatch_bytes_in_flight",
                                     "Bytes of photos the broker holds for their jobs (0 in shared mode).")
            held.add_metric([], bytes_in_flight(self.settings, client))
            beats = heartbeat.read_all(client)
        except Exception as exc:  # noqa: BLE001 - a broker down is a figure (0), not a failed scrape
            log.debug("metrics: broker not read (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        finally:
            client.close()
        up.add_metric([], 1)
        yield from (up, queue, held, *heartbeat_metrics(beats))


def heartbeat_metrics(beats: Iterable[heartbeat.Beat], now: float | None = None) -> list[Metric]:
    """Every worker process that sent a heartbeat: the model it serves and how long ago it spoke."""
    now = time.time() if now is None else now
    model = GaugeMetricFamily("moodwatch_worker_serving", "1 per worker process and the model it serves "
                              "(from its heartbeat; version empty while none serves).",
                              labels=["host", "pid", "state", "version"])
    age = GaugeMetricFamily("moodwatch_worker_heartbeat_age_seconds",
                            "Seconds since a worker process's last heartbeat.", labels=["host", "pid"])
    for beat in beats:
        model.add_metric([beat.host, str(beat.pid), beat.state, beat.model or ""], 1)
        age.add_metric([beat.host, str(beat.pid)], max(0.0, now - beat.at))
    return [model, age]


class DatabaseCollector:
    """Rows by status and the current model, read at each scrape (the web service's)."""

    def __init__(self, sessions: sessionmaker, current_model: Callable[[], str | None]):
        self.sessions = sessions
        self.current_model = current_model

    def collect(self) -> Iterator[Metric]:
        from db.repository import count_by_status

        rows = GaugeMetricFamily("moodwatch_results", "Rows in the results table, by status.",
                                 labels=["status"])
        try:
            with self.sessions() as session:
                for status, n in count_by_status(session).items():
                    rows.add_metric([status], n)
        except Exception as exc:  # noqa: BLE001 - a database down: the other figures still come
            log.debug("metrics: database not read (%s)", exc)
        else:
            yield rows
        current = GaugeMetricFamily("moodwatch_current_model", "The registry's current version (1).",
                                    labels=["version"])
        name = self.current_model()
        if name:
            current.add_metric([name], 1)
        yield current


def web_registry(settings: Settings, sessions: sessionmaker, current_model: Callable[[], str | None]
                 ) -> CollectorRegistry:
    """The web service's /metrics: its own registry, so two apps in one process never collide."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(sessions, current_model))
    registry.register(BrokerCollector(settings))
    return registry
