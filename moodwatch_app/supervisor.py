"""`moodwatch run`: the whole service as child processes under one parent.

The parent owns the embedded Redis (when no broker URL is set), so every child shares it;
children are restarted if they die, and on Ctrl-C/SIGTERM each gets a SIGTERM and time to
finish: the watcher sends what it holds, the worker finishes its jobs (any it cannot finish
stay unacknowledged and are redelivered on the next start).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from moodwatch.broker import embedded_url, start_embedded, stop_embedded
from moodwatch.redact import mask
from moodwatch.settings import Settings, child_env

log = logging.getLogger("moodwatch.run")


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moodwatch_app.cli", *self.argv], env=self.env,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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


def run_all(settings: Settings, stop: threading.Event, polling: bool = False, web: bool = True,
            beat: bool = True, say=print) -> int:
    from db.migrate import upgrade  # the parent migrates once, before any child starts
    from moodwatch.home import write_record

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
    say(f"moodwatch is running. Drop photos into {settings.inbox_dir.resolve()}")
    say("  results:  moodwatch results    (or SQL on " + mask(settings.database) + ")")
    if web:
        say(f"  review:   http://127.0.0.1:{settings.web_port}/")
    say(f"  commands from any folder reach this service through {record}")
    say("  stop:     Ctrl-C")
    while not stop.is_set():
        for child in children:
            if not child.alive() and not stop.is_set():
                code = child.proc.returncode if child.proc else None
                child.restarts += 1
                delay = min(30, 2 ** min(child.restarts, 5))
                log.warning("%s exited (code %s); restarting in %ds", child.name, code, delay)
                if stop.wait(delay):
                    break
                child.start()
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
