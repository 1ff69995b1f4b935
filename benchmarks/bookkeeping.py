"""The worker's cost per photo outside the model: process_batch with a classifier that returns
at once, on real photos in a temporary inbox and a temporary SQLite database, in batches as the
worker gets them (the admission's read, hash and checks, the queries, the insert, the commit).

    .venv/bin/python benchmarks/bookkeeping.py [--images DIR] [--count N] [--database-url URL]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from datetime import UTC, datetime
from itertools import cycle, islice
from pathlib import Path

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from moodwatch.images import extension_allowed
from moodwatch.registry import Version
from moodwatch.settings import Settings
from worker.inference import Prediction
from worker.processing import process_batch

ROOT = Path(__file__).resolve().parent.parent


class Instant:
    """A ClassifierLike that labels every file at once: only the bookkeeping is timed."""

    version = Version("bookkeeping", Path("/nonexistent"))

    def classify_bytes(self, names, blobs, max_pixels, time_limit=None, images=None):
        return [Prediction(n, "happy", 0.8, 0.2) for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/datasets/web-happy-sad")
    parser.add_argument("--count", type=int, default=640)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="moodwatch-bookkeeping-"))
    try:
        settings = Settings(data_dir=scratch / "data", model_dir=scratch / "models")
        settings.inbox_dir.mkdir(parents=True)
        photos = sorted(p for p in args.images.rglob("*") if p.is_file() and extension_allowed(p.name))
        files = [shutil.copy(p, settings.inbox_dir / f"{i:05d}{p.suffix.lower()}")
                 for i, p in enumerate(islice(cycle(photos), args.count))]
        url = args.database_url or f"sqlite:///{scratch / 'results.db'}"
        upgrade(url)
        sessions = make_sessionmaker(make_engine(url))
        now = datetime.now(UTC).isoformat()
        run = hashlib.sha256(str(scratch).encode()).hexdigest()
        messages = [{"event_id": hashlib.sha256(f"{run}{i}".encode()).hexdigest()[:40], "path": str(p),
                     "received_at": now} for i, p in enumerate(files)]
        batch = settings.batch_size
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(0, len(messages), batch):
            process_batch(messages[i : i + batch], settings, sessions, Instant(), move_files=False,
                          dedupe=False)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{len(files)} photos from {args.images}, batches of {batch}, "
              f"{make_engine(url).url.get_backend_name()}: {cpu / len(files) * 1000:.3f} ms CPU and "
              f"{wall / len(files) * 1000:.3f} ms wall a photo outside the model")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
