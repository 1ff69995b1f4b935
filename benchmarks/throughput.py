"""End-to-end throughput through the real broker, worker processes and database, against the
naive way (one model.predict per image) and the decode floor (the same photos decoded and
preprocessed by the worker's own functions on as many processes, no model), measured in the
same run, on the CPU the header names."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from db.migrate import open_database
from db.models import Result
from moodwatch.images import ImageRejected, extension_allowed, inspect_image
from moodwatch.litert import DYNAMIC_INT8, LITE_MANIFEST, lite_name
from moodwatch.pipeline import FACE_MODEL_FILE, PIPELINE_FILE, prepare_bytes_before_cnn
from moodwatch.queue import CLASSIFY_TASK, make_celery
from moodwatch.registry import Registry, Version
from moodwatch.settings import Settings, child_env
from moodwatch.vocab import DEFAULT_MAX_PIXELS


@dataclass
class BenchResult:
    count: int
    end_to_end: float  # images/s
    naive: float  # images/s
    seconds: float
    workers: int
    concurrency: int
    without_faces: float | None = None  # images/s of the same version's whole-image CNN alone
    floor: float = 0.0  # images/s of decoding and preprocessing alone (decode_floor)
    cpu: str = ""

    @property
    def ratio(self) -> float:
        return self.end_to_end / self.naive if self.naive else float("inf")

    @property
    def of_floor(self) -> float:
        return self.end_to_end / self.floor if self.floor else 0.0


def cpu_description() -> str:
    """The CPU model (/proc/cpuinfo's "model name"), the cores, and whether it has AMX (the
    amx_tile flag): TensorFlow's matrix work is several times cheaper on a CPU with it."""
    model, amx = "", False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags":
                amx = amx or "amx_tile" in value.split()
    except OSError:
        pass
    model = model or platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {'AMX' if amx else 'no AMX'}"


def _usable(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and extension_allowed(p.name):
            try:
                inspect_image(p.read_bytes())
                out.append(p)
            except (ImageRejected, OSError):
                pass
    return out


def prepare_images(images: Path | None, count: int, scratch: Path) -> list[Path]:
    if images is not None:
        found = _usable(images)
        if not found:
            raise ValueError(f"no usable images under {images}")
        return list(itertools.islice(itertools.cycle(found), count))
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    unique = []
    for i in range(min(count, 200)):
        img = cv2.resize(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), (640, 480))
        path = scratch / f"gen_{i}.jpg"
        cv2.imwrite(str(path), img)
        unique.append(path)
    return list(itertools.islice(itertools.cycle(unique), count))


def naive_rate(settings: Settings, files: list[Path], sample: int = 60) -> float:
    """The naive way: load the model, then one model.predict call per image."""
    from moodwatch.images import load_image
    from moodwatch.modelio import load_model

    model = load_model(Registry.for_settings(settings).require_current().model_path)
    model.predict(load_image(files[0])[None], verbose=0)  # warm-up, not timed
    chosen = files[:sample]
    t0 = time.perf_counter()
    for p in chosen:
        model.predict(load_image(p)[None], verbose=0)
    return len(chosen) / (time.perf_counter() - t0)


def _floor_chunk(paths: list[str], faces: bool, max_pixels: int) -> int:
    for p in paths:
        prepare_bytes_before_cnn(Path(p).read_bytes(), max_pixels, faces)
    return len(paths)


def _floor_warm(faces: bool) -> None:
    """Imports and OpenCV's first call, before the clock starts (as a worker's warm-up)."""
    import cv2
    import numpy as np

    prepare_bytes_before_cnn(cv2.imencode(".jpg", np.full((320, 320, 3), 128, np.uint8))[1].tobytes(),
                             faces=faces)


def decode_floor(files: list[Path], processes: int, faces: bool,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> float:
    """Images/s of reading, checking, decoding and preprocessing the files as the worker does
    before any CNN (moodwatch.pipeline.prepare_bytes_before_cnn: the 256 px image and, for a
    version with faces, the face detector's input), on `processes` processes of one thread
    each, no model: the most any pipeline could do with these photos on this machine."""
    chunks = [[str(p) for p in files[i : i + 8]] for i in range(0, len(files), 8)]
    # Spawned: a fork would copy this process's broker connections and threads.
    with multiprocessing.get_context("spawn").Pool(processes, _floor_warm, (faces,)) as pool:
        pool.starmap(_floor_warm, [(faces,)] * processes)  # every process started and warm
        t0 = time.perf_counter()
        done = sum(pool.starmap(_floor_chunk, [(c, faces, max_pixels) for c in chunks], chunksize=1))
        return done / (time.perf_counter() - t0)


def whole_image_only(registry: Registry, scratch: Path) -> Path | None:
    """A registry holding the current version without its face models (faces off), its
    whole-image CNN served as in the version (its LiteRT conversions and their manifest come
    along), or None when the current version reads whole images only."""
    version = registry.require_current()
    if not (version.path / FACE_MODEL_FILE).is_file():
        return None
    root = scratch / "models-no-faces"
    copy = root / version.name
    copy.mkdir(parents=True)
    for name in ("model.keras", PIPELINE_FILE, LITE_MANIFEST, lite_name("model.keras"),
                 lite_name("model.keras", DYNAMIC_INT8)):
        if (version.path / name).is_file():
            shutil.copy2(version.path / name, copy / name)
    Registry(root).promote(Version(version.name, copy))
    return root


def run_bench(settings: Settings, count: int, images: Path | None, workers: int,
              concurrency: int, batch: int, database_url: str | None,
              say=print) -> BenchResult:
    scratch = Path(tempfile.mkdtemp(prefix="moodwatch-bench-"))
    db_url = database_url or f"sqlite:///{scratch / 'bench.db'}"
    sessions = open_database(db_url)
    try:
        # The photos are copied into the bench's own inbox: workers read only what the inbox holds.
        inbox = scratch / "data" / "inbox"
        inbox.mkdir(parents=True)
        files = [Path(shutil.copy2(p, inbox / f"{i:05d}{p.suffix.lower()}"))
                 for i, p in enumerate(prepare_images(images, count, scratch))]
        say(f"bench: {count} images ({'cycling ' + str(images) if images else 'generated 640x480'}), "
            f"{workers} worker(s) x {concurrency} processes, batch {batch}, database "
            f"{sessions.kw['bind'].url.get_backend_name()}")
        cpu = cpu_description()
        say(f"CPU: {cpu}")
        rate = Pass(settings, sessions, db_url, scratch, workers, concurrency, batch)
        model_dir = settings.model_dir.resolve()
        end_to_end = rate.images_per_s(files, model_dir, say)
        no_faces_dir = whole_image_only(Registry(model_dir), scratch)
        without_faces = rate.images_per_s(files, no_faces_dir, say) if no_faces_dir else None
        faces = (Registry(model_dir).require_current().path / FACE_MODEL_FILE).is_file()
        floor = decode_floor(files, workers * concurrency, faces, settings.max_pixels)
        naive = naive_rate(settings, files)
    finally:
        sessions.kw["bind"].dispose()
        shutil.rmtree(scratch, ignore_errors=True)
    return BenchResult(count, end_to_end, naive, count / end_to_end, workers, concurrency, without_faces,
                       floor, cpu)


@dataclass
class Pass:
    """One timed pass of the files through fresh worker processes on a private queue."""

    settings: Settings
    sessions: Any
    db_url: str
    scratch: Path
    workers: int
    concurrency: int
    batch: int

    def images_per_s(self, files: list[Path], model_dir: Path, say=print) -> float:
        run_id = uuid.uuid4().hex[:8]
        queue = f"bench-{run_id}"
        app = make_celery(self.settings)
        scratch = self.settings.model_copy(update={
            "database_url": self.db_url, "model_dir": model_dir, "data_dir": self.scratch / "data",
            "inbox": None})
        # Workers refuse a job larger than their batch size.
        env = child_env(scratch, app.conf.broker_url, TF_CPP_MIN_LOG_LEVEL="2",
                        MOODWATCH_BATCH_SIZE=str(self.batch))
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "moodwatch_app.cli", "worker", "-c", str(self.concurrency),
                 "-Q", queue, "-n", f"bench{i}-{run_id}@%h", "--loglevel", "WARNING"],
                env=env, stdout=subprocess.DEVNULL,
                stderr=open(self.scratch / f"worker{i}.log", "wb"),  # noqa: SIM115
                start_new_session=True,
            )
            for i in range(self.workers)
        ]

        with self.sessions() as s:  # this pass's rows are the ones after this id
            start = s.scalar(select(func.max(Result.id))) or 0

        def rows() -> int:
            with self.sessions() as s:
                return s.scalar(select(func.count()).select_from(Result).where(Result.id > start)) or 0

        def send(paths: list[Path], tag: str) -> None:
            now = datetime.now(UTC).isoformat()
            # Event ids as the watcher makes them (40 hex digits): workers refuse anything else.
            msgs = [{"event_id": hashlib.sha256(f"{run_id}-{tag}-{i}".encode()).hexdigest()[:40],
                     "path": str(p), "received_at": now} for i, p in enumerate(paths)]
            for i in range(0, len(msgs), self.batch):
                app.send_task(CLASSIFY_TASK, args=[msgs[i : i + self.batch]],
                              kwargs={"move_files": False, "dedupe": False}, queue=queue)

        try:
            # Warm-up: every pool process loads the model before the clock starts.
            warm = self.workers * self.concurrency * 2
            send(files[:1] * warm, "warm")
            _wait(lambda: rows() >= warm, 300, procs, self.scratch)
            t0 = time.perf_counter()
            send(files, "run")
            _wait(lambda: rows() >= warm + len(files), 1800, procs, self.scratch, poll=0.05)
            seconds = time.perf_counter() - t0
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
            app.close()
        with self.sessions() as s:
            failed = s.scalar(select(func.count()).select_from(Result).where(
                Result.status != "classified", Result.id > start))
        if failed:
            say(f"warning: {failed} images were not classified")
        return len(files) / seconds


def _wait(pred, timeout: float, procs, scratch: Path, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if all(p.poll() is not None for p in procs):
            logs = "".join(f.read_text(errors="replace")[-2000:] for f in scratch.glob("worker*.log"))
            raise RuntimeError(f"bench workers exited:\n{logs}")
        time.sleep(poll)
    raise TimeoutError("bench did not finish in time")
