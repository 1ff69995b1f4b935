"""What `moodwatch status` and the review page's status strip show."""

from __future__ import annotations

import os
from typing import Any

import redis.exceptions

from moodwatch import heartbeat
from moodwatch.broker import running_broker_url
from moodwatch.queue import BROKER_ERRORS, CLASSIFY_QUEUE, TRAINING_QUEUE, make_celery
from moodwatch.redact import mask
from moodwatch.registry import Registry
from moodwatch.settings import Settings


def inbox_backlog(settings: Settings) -> int:
    n = 0
    if settings.inbox_dir.is_dir():
        for _root, _dirs, files in os.walk(settings.inbox_dir):
            n += sum(1 for f in files if not f.startswith("."))
    return n


def worker_readiness(client: Any) -> tuple[str, str]:
    """Whether a worker has its model loaded (its heartbeat), not only whether one answers a
    ping: the line `moodwatch status` shows, and the state (moodwatch.heartbeat.overall)."""
    try:
        beats = heartbeat.read_all(client)
    except redis.exceptions.ResponseError as exc:  # e.g. a Redis whose ACL refuses SCAN
        return f"unknown (the broker refused to list worker heartbeats: {exc})", "unknown"
    return heartbeat.describe(beats), heartbeat.overall(beats)


def collect(settings: Settings, ping_timeout: float = 1.0) -> dict[str, Any]:
    """Read-only: with the embedded Redis not running it says so, and starts none."""
    out: dict[str, Any] = {
        "database": mask(settings.database),
        "broker_url": mask(settings.broker_url or "embedded"),
        "inbox": str(settings.inbox_dir),
        "inbox_backlog": inbox_backlog(settings),
        "current_model": Registry.for_settings(settings).current_name(),
    }
    url = running_broker_url(settings)
    if url is None:
        out["workers_alive"] = 0
        out["worker"], out["worker_state"] = "no worker (no broker running)", "none"
        out["broker"] = (f"not running (no embedded Redis for {settings.data_dir}; "
                         "`moodwatch run` starts it)")
        return out
    try:
        app = make_celery(settings.model_copy(update={"broker_url": url}))
        with app.connection_for_write() as conn:
            client = conn.channel().client
            out["queue_length"] = client.llen(CLASSIFY_QUEUE)
            out["training_queue_length"] = client.llen(TRAINING_QUEUE)
            out["worker"], out["worker_state"] = worker_readiness(client)
        replies = app.control.ping(timeout=ping_timeout) or []
        out["workers_alive"] = len(replies)
        app.close()
    except BROKER_ERRORS as exc:
        out["broker"] = f"unreachable: {exc.__class__.__name__}: {exc}"
    return {k: mask(v) if isinstance(v, str) else v for k, v in out.items()}
