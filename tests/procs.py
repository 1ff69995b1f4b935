"""Helpers that run real service processes (workers) and wait on their effects."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Result

ROOT = Path(__file__).resolve().parents[1]


def service_env(**settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"MOODWATCH_{k.upper()}": str(v) for k, v in settings.items()})
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def start_worker(env: dict[str, str], log_path: Path, concurrency: int = 1,
                 name: str = "w1") -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(
        [sys.executable, "-m", "moodwatch.cli", "worker", "-c", str(concurrency),
         "-n", f"{name}@%h"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n--- log ---\n{tail}")


class Rows:
    def __init__(self, url: str):
        self.engine = make_engine(url)
        self.sessions = make_sessionmaker(self.engine)

    def count(self) -> int:
        try:
            with self.sessions() as s:
                return s.scalar(select(func.count()).select_from(Result)) or 0
        except Exception:
            return 0

    def all(self) -> list[Result]:
        with self.sessions() as s:
            return list(s.scalars(select(Result).order_by(Result.id)))

    def close(self) -> None:
        self.engine.dispose()
