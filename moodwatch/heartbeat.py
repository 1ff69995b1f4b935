"""Worker readiness, in the broker's Redis: which worker processes serve, with which model.

Each worker pool process keeps a key `moodwatch:worker:<host>:<pid>` alive while it lives: a small
JSON record (host, its pid and its worker's, the state, the model it serves, the time), written
when its state changes and every BEAT_SECONDS, expiring EXPIRY_SECONDS after the last write. A
process that dies without a word (kill -9, a lost machine) drops out within EXPIRY_SECONDS.

States: `loading` (the model is being loaded and warmed up: tens of seconds), `ready` (it takes
jobs; `model` names the version), `unavailable` (no model can serve; `problem` says why, as the
worker's 'model cannot serve' warning does). `moodwatch run` waits for `ready` before it says it
is running, `moodwatch status` and the review page's status strip show the records, and they are
what a list of the workers on every machine reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from moodwatch.broker import redis_client

log = logging.getLogger(__name__)
PREFIX = "moodwatch:worker:"
BEAT_SECONDS = 5.0
EXPIRY_SECONDS = 15
LOADING, READY, UNAVAILABLE = "loading", "ready", "unavailable"


@dataclass(frozen=True)
class Beat:
    host: str
    pid: int  # the pool process that holds the model
    worker_pid: int  # its worker's main process (the one `moodwatch run` started)
    state: str
    model: str | None = None
    problem: str | None = None
    at: float = 0.0  # wall-clock time of the write (seconds since the epoch)

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.host}:{self.pid}"


def write(client: Any, beat: Beat, expiry: int = EXPIRY_SECONDS) -> None:
    client.set(beat.key, json.dumps(asdict(beat)), ex=expiry)


def remove(client: Any, beat: Beat) -> None:
    client.delete(beat.key)


def read_all(client: Any) -> list[Beat]:
    """Every live record, oldest host and pid first; a record that is not one is skipped."""
    keys = sorted(client.scan_iter(match=PREFIX + "*", count=100))
    beats = []
    for raw in client.mget(keys) if keys else []:
        if raw is None:  # expired between the scan and the read
            continue
        try:
            beats.append(Beat(**json.loads(raw)))
        except (ValueError, TypeError):
            continue
    return beats


def _ago(seconds: float) -> str:
    return f"{max(0, round(seconds))} s ago"


def describe(beats: list[Beat], now: float | None = None) -> str:
    """One line per worker (its pool processes together), as `moodwatch status` shows it."""
    if not beats:
        return (f"no worker (none has sent a heartbeat in the last {EXPIRY_SECONDS} s; "
                "`moodwatch run` or `moodwatch worker` starts one)")
    now = time.time() if now is None else now
    nodes: dict[tuple[str, int], list[Beat]] = {}
    for beat in beats:
        nodes.setdefault((beat.host, beat.worker_pid), []).append(beat)
    return "; ".join(_describe_node(host, pid, group, now) for (host, pid), group in nodes.items())


def _describe_node(host: str, pid: int, group: list[Beat], now: float) -> str:
    where = f"on host {host}, pid {pid}"
    last = f"last heartbeat {_ago(now - max(b.at for b in group))}"
    ready = [b for b in group if b.state == READY]
    if ready:
        models = ", ".join(sorted({b.model or "?" for b in ready}))
        return f"ready (model {models}) {where}, {last}"
    problems = [b.problem for b in group if b.state == UNAVAILABLE and b.problem]
    if problems:
        return f"cannot serve {where}: {problems[0]}; {last}"
    return f"loading the model {where}, {last}"


def overall(beats: list[Beat]) -> str:
    """The best state of any worker: ready, loading, unavailable, or none (no worker)."""
    states = {b.state for b in beats}
    return next((s for s in (READY, LOADING, UNAVAILABLE) if s in states), "none")


def this_host() -> str:
    return socket.gethostname()


class Heartbeat:
    """The thread that keeps this process's record alive. state() says (state, model, problem)
    now; it is asked every `poll` seconds, so a change (the model ready) is written at once."""

    def __init__(self, broker_url: str, state: Callable[[], tuple[str, str | None, str | None]],
                 beat_every: float = BEAT_SECONDS, poll: float = 0.5):
        self.client = redis_client(broker_url)
        self.state = state
        self.beat_every = beat_every
        self.poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: Beat | None = None

    def _current(self) -> Beat:
        state, model, problem = self.state()
        return Beat(host=this_host(), pid=os.getpid(), worker_pid=os.getppid(), state=state,
                    model=model, problem=problem, at=time.time())

    def _run(self) -> None:
        written_at = 0.0
        failing = False
        while not self._stop.is_set():
            beat = self._current()
            changed = self._last is None or (beat.state, beat.model, beat.problem) != (
                self._last.state, self._last.model, self._last.problem)
            if changed or time.monotonic() - written_at >= self.beat_every:
                try:
                    write(self.client, beat)
                    self._last, written_at = beat, time.monotonic()
                    failing = False
                except Exception as exc:  # noqa: BLE001 - a broker outage: Celery says so; retry
                    if not failing:
                        log.debug("heartbeat not written (%s); retrying", exc)
                    failing = True
            self._stop.wait(self.poll)

    def start(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and remove the record: the worker is gone now, not in EXPIRY_SECONDS."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._last is not None:
            with contextlib.suppress(Exception):
                remove(self.client, self._last)
