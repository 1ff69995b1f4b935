"""Soak: files dropped while PostgreSQL is unreachable for longer than the jobs' retry budget.

    python benchmarks/soak_db_outage.py [COUNT] [OUTAGE_SECONDS]      (default 2000, 60)

A real `moodwatch run` (embedded broker, the shipped model) writes to the machine's PostgreSQL
(127.0.0.1:5432) through a TCP proxy this script cuts. The jobs get MOODWATCH_JOB_RETRIES=3
(backoff 1, 2, 4 s: about 7 s of budget), so every job sent during the outage is dropped; after
the database is back, only the running watcher's rescan (MOODWATCH_RESEND_SECONDS=20) can bring
those files back. Nothing is restarted. Prints the time from the restore until every file has
exactly one row and the inbox is empty, and checks that nothing restarted.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import psycopg
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from db.engine import make_engine, make_sessionmaker  # noqa: E402
from db.models import Result  # noqa: E402
from tests.procs import CuttableProxy  # noqa: E402

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def wait(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}; log: {log}")


def inbox_files(inbox: Path) -> int:
    return sum(1 for p in inbox.rglob("*") if p.is_file())


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    outage = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    work = Path(tempfile.mkdtemp(prefix="moodwatch-soak-"))
    data, log = work / "data", work / "run.log"
    name = f"mw_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    proxy = CuttableProxy(5432)
    direct = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               MOODWATCH_DATA_DIR=str(data), MOODWATCH_MODEL_DIR=str(ROOT / "models"),
               MOODWATCH_DATABASE_URL=direct.replace(":5432/", f":{proxy.port}/"),
               MOODWATCH_JOB_RETRIES="3", MOODWATCH_RESEND_SECONDS="20", MOODWATCH_RESCAN_SECONDS="5",
               MOODWATCH_SETTLE_SECONDS="0.5", MOODWATCH_BATCH_WAIT="0.3")
    env.pop("MOODWATCH_BROKER_URL", None)
    engine = make_engine(direct)  # the script reads around the proxy
    sessions = make_sessionmaker(engine)

    def rows() -> int:
        with sessions() as s:
            return s.scalar(select(func.count()).select_from(Result)) or 0

    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "run", "--no-web", "--no-beat"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
    try:
        inbox = data / "inbox"
        wait(lambda: "moodwatch is running" in log.read_text(errors="replace"), 120, "start", log)
        rng = np.random.default_rng(0)

        def drop(n: int, prefix: str) -> None:
            for i in range(n):  # distinct random images: none is a duplicate of another
                img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
                (inbox / f"{prefix}_{i:05d}.jpg").write_bytes(cv2.imencode(".jpg", img)[1].tobytes())

        drop(1, "warm")  # the worker loads the model before the outage
        wait(lambda: rows() >= 1, 180, "the warm-up row", log)
        proxy.cut()
        t_cut = time.perf_counter()
        drop(count, "soak")
        print(f"soak: database cut; {count} files dropped in {time.perf_counter() - t_cut:.1f}s")
        time.sleep(max(0.0, outage - (time.perf_counter() - t_cut)))
        text = log.read_text(errors="replace")
        dropped_jobs = text.count("raised unexpected: OperationalError")
        print(f"soak: after {outage:.0f}s of outage, {dropped_jobs} job(s) had used up their retries "
              f"and were dropped; {rows() - 1} soak rows")
        proxy.restore()
        t_restore = time.perf_counter()
        wait(lambda: rows() >= count + 1 and inbox_files(inbox) == 0, 1800, "every row, empty inbox", log)
        recovered = time.perf_counter() - t_restore
        time.sleep(3)  # a second row, if any were coming, would show up now
        with sessions() as s:
            per_name = dict(s.execute(select(Result.file_name, func.count())
                                      .group_by(Result.file_name)).all())
            by_status = dict(s.execute(select(Result.status, func.count()).group_by(Result.status)).all())
        text = log.read_text(errors="replace")
        restarted = "restarting in" in text or proc.poll() is not None
        ok = len(per_name) == count + 1 and set(per_name.values()) == {1} and not restarted
        print(f"soak: {count} files, {outage:.0f}s outage: all recorded {recovered:.1f}s after the "
              f"restore ({time.perf_counter() - t_cut:.1f}s after the cut); statuses {by_status}; "
              f"exactly one row each: {set(per_name.values()) == {1}}; inbox empty: "
              f"{inbox_files(inbox) == 0}; anything restarted: {restarted}")
        if not ok:
            raise SystemExit(f"soak FAILED (log: {log})")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=180)
        proxy.close()
        engine.dispose()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
