"""A burst of small files dropped into the inbox of a real `moodwatch run` (embedded stack).

    python benchmarks/burst.py [COUNT]      (default 5000)

Prints the time from the first drop until every file has its row, and the rate.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from db.engine import make_engine, make_sessionmaker  # noqa: E402
from db.models import Result  # noqa: E402


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    work = Path(tempfile.mkdtemp(prefix="moodwatch-burst-"))
    data = work / "data"
    env = dict(os.environ, MOODWATCH_DATA_DIR=str(data), MOODWATCH_MODEL_DIR=str(ROOT / "models"),
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    env.pop("MOODWATCH_BROKER_URL", None)
    env.pop("MOODWATCH_DATABASE_URL", None)
    log = open(work / "run.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "run", "--no-web", "--no-beat"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    inbox = data / "inbox"
    while not inbox.is_dir():
        time.sleep(0.2)
    time.sleep(8)  # let the worker start
    rng = np.random.default_rng(0)
    # Small, distinct images (different bytes, so none is skipped as a duplicate).
    blobs = []
    for _ in range(count):
        img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        blobs.append(cv2.imencode(".jpg", img)[1].tobytes())
    sessions = make_sessionmaker(make_engine(f"sqlite:///{data / 'moodwatch.db'}"))
    t0 = time.perf_counter()
    for i, blob in enumerate(blobs):
        (inbox / f"burst_{i:05d}.jpg").write_bytes(blob)
    dropped = time.perf_counter() - t0
    n = 0
    while n < count:
        time.sleep(0.5)
        with sessions() as s:
            n = s.scalar(select(func.count()).select_from(Result)) or 0
    total = time.perf_counter() - t0
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    with sessions() as s:
        by_status = dict(s.execute(select(Result.status, func.count()).group_by(Result.status)).all())
    print(f"burst: {count} files dropped in {dropped:.1f}s; all recorded after {total:.1f}s "
          f"({count / total:.0f} files/s end to end); statuses {by_status}")


if __name__ == "__main__":
    main()
