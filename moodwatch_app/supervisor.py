"""`moodwatch run`: the whole service as child processes under one parent.

The parent owns the embedded Redis (when no broker URL is set), so every child shares it, and
starts it again if it dies; children are restarted if they die, and on Ctrl-C/SIGTERM/SIGHUP each
gets a SIGTERM and time to finish: the watcher sends what it holds, the worker finishes its jobs
(any it cannot finish stay unacknowledged and are redelivered on the next start).

Children die with the parent: each asks the kernel for a SIGTERM when its parent dies (a
`kill -9`, the OOM killer), the same clean stop as above, and the worker's pool processes follow
their worker (Celery gives them a parent-death SIGKILL of their own). One `run` per data folder:
see moodwatch.servicelock.

It says it is running when its worker has the model loaded and warmed up (the worker's heartbeat,
moodwatch.heartbeat), and "loading the model" until then.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from moodwatch.broker import (
    embedded_running,
    embedded_url,
    redis_client,
    restart_embedded,
    start_embedded,
    stop_embedded,
)
from moodwatch.heartbeat import READY, UNAVAILABLE, Beat, read_all, this_host
from moodwatch.redact import mask
from moodwatch.servicelock import hold_run
from moodwatch.settings import Settings, child_env

log = logging.getLogger("moodwatch.run")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent():
    """A preexec_fn: the child gets SIGTERM when this process dies, however it dies.

    Linux only (elsewhere a no-op). libc is loaded here, before the fork: the child only calls
    prctl. The signal follows the thread that forks, so children are started from the main
    thread only.
    """
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    parent = os.getpid()

    def preexec() -> None:
        if prctl is None:
            return
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request: no signal would come
            os._exit(1)

    return preexec


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    restart_at: float | None = None  # when a dead child is due to start again

    def start(self) -> None:
        # A session of its own: Ctrl-C in the terminal reaches the parent only, which stops the
        # children in order (the broker's users last).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moodwatch_app.cli", *self.argv], env=self.env,
            start_new_session=True, preexec_fn=_die_with_parent(),
        )
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tend(self) -> None:
        """Start a dead child again, after a back-off; never waits, so the loop that calls it
        keeps watching the broker and the other children meanwhile."""
        if self.alive():
            return
        if self.restart_at is None:
            self.restarts += 1
            delay = min(30, 2 ** min(self.restarts, 5))
            code = self.proc.returncode if self.proc else None
            log.warning("%s exited (code %s); restarting in %ds", self.name, code, delay)
            self.restart_at = time.monotonic() + delay
        elif time.monotonic() >= self.restart_at:
            self.restart_at = None
            self.start()

    def terminate(self) -> None:
        # The child's main process only: Celery's warm shutdown lets its pool processes finish
        # their jobs, which a SIGTERM to the whole group would cut between a row and its move.
        # The group is killed only if the child outstays its timeout (wait).
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def prepare_folders(settings: Settings) -> None:
    for folder in (settings.inbox_dir, settings.data_dir / "happy", settings.data_dir / "sad",
                   settings.processed_dir, settings.rejected_dir, settings.model_dir):
        folder.mkdir(parents=True, exist_ok=True)


def _quiet_if_gone(say):
    """say, minus the terminal: after a closed terminal's SIGHUP a print fails (EIO), and the
    stop must go on."""
    def safe(text: str) -> None:
        with contextlib.suppress(OSError):
            say(text)

    return safe


def _keep_broker(settings: Settings) -> None:
    """Start the embedded Redis again if it died: the children's retries then reach it."""
    if embedded_running():
        return
    try:
        client = restart_embedded()
    except Exception as exc:  # noqa: BLE001 - never fatal: the next round tries again
        log.warning("embedded Redis is down and did not start again (%s); retrying", exc)
        time.sleep(2)
        return
    log.warning("embedded Redis had stopped; started it again (pid %d) at %s, its queue kept in %s",
                client.pid, client.socket_file, settings.embedded_redis_path)


class Readiness:
    """Whether this run's worker has loaded its model, from the heartbeat its pool processes keep
    in the broker (moodwatch.heartbeat): "running" is said when a photo dropped now is classified
    now, not 30-75 s before. Why it cannot serve (no model yet, a broken one) is said once per
    reason, so a user waiting for the banner knows what to do."""

    def __init__(self, broker_url: str, worker: Child, say):
        self.client = redis_client(broker_url, timeout=1.0)
        self.worker = worker
        self.say = say
        self.announced = False
        self._problem: str | None = None

    def check(self) -> Beat | None:
        """This run's worker's first ready record, once (None before and after)."""
        if self.worker.proc is None:
            return None
        try:
            mine = [b for b in read_all(self.client)
                    if b.host == this_host() and b.worker_pid == self.worker.proc.pid]
        except (RedisError, OSError):  # the broker is restarting: asked again next round
            return None
        ready = [b for b in mine if b.state == READY]
        if ready:
            self.announced = True
            return ready[0]
        problem = next((b.problem for b in mine if b.state == UNAVAILABLE and b.problem), None)
        if problem and problem != self._problem:
            self.say(f"  not ready: {problem} (the worker tries again when the model changes)")
        self._problem = problem or self._problem
        return None


def run_all(settings: Settings, stop: threading.Event, polling: bool = False, web: bool = True,
            beat: bool = True, say=print) -> int:
    from db.migrate import upgrade  # the parent migrates once, before any child starts
    from moodwatch.home import write_record

    # First, before anything starts or the service record is overwritten: refuse a second service.
    hold_run(settings.data_dir, ["watch", *(["beat"] if beat else [])])
    say = _quiet_if_gone(say)
    prepare_folders(settings)
    upgrade(settings.database)
    record = write_record(settings)  # how commands run from any folder find this service
    # The service owns the embedded Redis (started here, or joined), and stops it at the end.
    url = settings.broker_url or embedded_url(start_embedded(settings.embedded_redis_path))
    env = child_env(settings, url)
    children = [
        Child("worker", ["worker"], env=env),
        Child("watcher", ["watch", *(["--polling"] if polling else [])], env=env),
    ]
    if beat:
        children.append(Child("beat", ["beat"], env=env))
    if web:
        children.append(Child("web", ["web"], env=env))
    for child in children:
        child.start()
    say("moodwatch is starting: loading the model (a minute or more on a busy machine; photos "
        "dropped meanwhile wait in the queue)...")
    readiness = Readiness(url, children[0], say)

    def banner(ready: Beat) -> None:
        say(f"moodwatch is running (model {ready.model}). Drop photos into {settings.inbox_dir.resolve()}")
        say("  results:  moodwatch results    (or SQL on " + mask(settings.database) + ")")
        if web:
            say(f"  review:   http://127.0.0.1:{settings.web_port}/")
        say(f"  commands from any folder reach this service through {record}")
        say("  stop:     Ctrl-C")

    while not stop.is_set():
        if not settings.broker_url:
            _keep_broker(settings)
        for child in children:
            child.tend()
        if not readiness.announced and (ready := readiness.check()) is not None:
            banner(ready)
        stop.wait(0.5)
    say("stopping: the watcher sends what it holds, the worker finishes its jobs...")
    # All at once: what the watcher still holds goes to the broker, where it waits for the next
    # start, and the worker's warm shutdown takes no new job, so nobody waits on anybody.
    order = sorted(children, key=lambda c: {"watcher": 0, "web": 1, "beat": 2, "worker": 3}[c.name])
    for child in order:
        child.terminate()
    for child in order:
        child.wait(timeout=120 if child.name == "worker" else 30)
    if not settings.broker_url:
        stop_embedded()
    say("stopped.")
    return 0
