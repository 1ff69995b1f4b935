"""Batched inference: decode (and detect faces) in threads while compiled forward passes run."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from moodwatch.images import DEFAULT_MAX_PIXELS, ImageRejected
from moodwatch.modelio import label_for
from moodwatch.pipeline import Pipeline, Prepared, prepare_bytes, prepare_path
from moodwatch.registry import Registry, Version

log = logging.getLogger("moodwatch.worker")
WORKER_MISSING_NOTE = " (not reachable from this worker)"


@dataclass
class Prediction:
    path: str
    label: str | None = None
    confidence: float | None = None
    score: float | None = None
    error: str | None = None  # why this file could not be classified
    rejected: bool = False  # the file itself is bad (as opposed to a failure reading it)
    # The batch's time so far divided by its files so far: files are decoded in parallel and
    # scored together, so no file has a time of its own.
    batch_seconds_per_file: float = 0.0
    faces: list[list[float]] | None = None  # face boxes the model used, as fractions of the image


class Classifier:
    """A loaded model version and its compiled batch functions; one per worker process."""

    def __init__(self, version: Version, batch_size: int = 32, decode_threads: int | None = None,
                 missing_note: str = ""):
        from moodwatch.modelio import ModelLoadError

        self.version = version
        self.batch_size = batch_size
        self.missing_note = missing_note  # appended to "file not found: ..." (the worker says where)
        try:
            self.pipeline = Pipeline.load(version.path, batch_size)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load model {version.path}: {exc}") from exc
        self.decode_threads = decode_threads or min(4, os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(max_workers=self.decode_threads, thread_name_prefix="decode")

    def _decode(self, source: str | bytes, max_pixels: int) -> tuple[Prepared | None, str | None, bool]:
        """Prepare a file by path, or bytes a caller has already read (and hashed) itself."""
        try:
            if isinstance(source, bytes):
                return prepare_bytes(source, max_pixels, faces=self.pipeline.uses_faces), None, False
            return prepare_path(source, max_pixels, faces=self.pipeline.uses_faces), None, False
        except ImageRejected as exc:
            return None, exc.reason, True
        except FileNotFoundError:
            return None, f"file not found: {source}{self.missing_note}", False
        except OSError as exc:
            return None, f"cannot read file: {exc.strerror or exc}", False

    def classify_paths(self, paths: Sequence[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Prediction]:
        """Classify files; a bad one gets its reason and the others are still classified."""
        return list(self.iter_classify(paths, max_pixels))

    def classify_bytes(self, names: Sequence[str], blobs: Sequence[bytes],
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Prediction]:
        """Classify bytes already read: the worker reads each file once, safely, and hashes them."""
        return list(self.iter_classify(names, max_pixels, sources=blobs))

    def iter_classify(
        self, paths: Iterable[str], max_pixels: int = DEFAULT_MAX_PIXELS,
        sources: Sequence[bytes] | None = None,
    ) -> Iterator[Prediction]:
        paths = list(paths)
        t0 = time.perf_counter()
        futures: list[Future] = [self._pool.submit(self._decode, s, max_pixels)
                                 for s in (paths if sources is None else sources)]
        # Forward passes run on the chunk at hand while the pool decodes the next ones.
        for start in range(0, len(paths), self.batch_size):
            chunk_paths = paths[start : start + self.batch_size]
            decoded = [f.result() for f in futures[start : start + self.batch_size]]
            good = [i for i, (prep, _, _) in enumerate(decoded) if prep is not None]
            scores = self.pipeline.scores([decoded[i][0] for i in good]) if good else []
            by_index = dict(zip(good, scores, strict=True))
            elapsed = (time.perf_counter() - t0) / max(1, start + len(chunk_paths))
            for i, path in enumerate(chunk_paths):
                prep, error, rejected = decoded[i]
                if prep is None:
                    yield Prediction(path, error=error, rejected=rejected, batch_seconds_per_file=elapsed)
                    continue
                score = float(by_index[i])
                label, confidence = label_for(score)
                faces = prep.faces.relative_boxes() if prep.faces is not None else None
                yield Prediction(path, label, confidence, score, batch_seconds_per_file=elapsed, faces=faces)

    def warm_up(self) -> None:
        """One pass through decoding, face detection and every compiled forward pass, so the
        first real file does not pay for tracing graphs and loading detectors (seconds)."""
        import cv2
        import numpy as np

        def jpeg(side: int) -> bytes:
            return cv2.imencode(".jpg", np.full((side, side, 3), 128, np.uint8))[1].tobytes()

        faces = self.pipeline.uses_faces
        # A large photo (whole image, face detection) and a close-up, once on each decode thread.
        samples = [jpeg(320), jpeg(48)] * self.decode_threads
        prepared = list(self._pool.map(lambda d: prepare_bytes(d, faces=faces), samples))
        self.pipeline.scores(prepared[:2])
        if faces:  # the found-faces model: a blank photo has no face for scores() to use it on
            self.pipeline.face_scores(np.zeros((1, *self.pipeline.face.input_shape[1:]), np.uint8))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ModelCache:
    """Holds the current model of a process, loaded and warmed up, and follows the registry's
    pointer: with watch(), a background thread loads a new version while the old one serves."""

    def __init__(self, registry: Registry, batch_size: int = 32, check_every: float = 2.0):
        self.registry = registry
        self.batch_size = batch_size
        self.check_every = check_every
        self._classifier: Classifier | None = None
        self._retired: list[Classifier] = []  # replaced, closed by the next get() (no job uses them)
        self._load_lock = threading.Lock()  # one load at a time
        self._checked_at = 0.0
        self._watching = False

    def _load(self, version: Version) -> Classifier:
        t0 = time.perf_counter()
        classifier = Classifier(version, self.batch_size, missing_note=WORKER_MISSING_NOTE)
        classifier.warm_up()
        log.info("model %s loaded and warmed up in %.1fs (pid %d)", version.name,
                 time.perf_counter() - t0, os.getpid())
        return classifier

    def refresh(self) -> Classifier:
        """Load and warm up the current version unless it is the one held."""
        with self._load_lock:
            current = self.registry.require_current()
            held = self._classifier
            if held is not None and held.version == current:
                return held
            self._classifier = self._load(current)
            if held is not None:
                self._retired.append(held)
            return self._classifier

    def get(self) -> Classifier:
        """The model for the next job (jobs run one at a time in a worker process)."""
        while self._retired:
            self._retired.pop().close()
        held = self._classifier
        now = time.monotonic()
        if held is None or (not self._watching and now - self._checked_at >= self.check_every):
            self._checked_at = now
            return self.refresh()  # waits for a load the watcher thread has under way
        return held

    def watch(self) -> threading.Thread:
        """Load and warm up the current model now, then follow the pointer, in the background."""
        self._watching = True

        def follow() -> None:
            while True:
                try:
                    self.refresh()
                except Exception as exc:  # no model yet, or a broken one: jobs retry meanwhile
                    log.warning("model not loaded: %s", exc)
                time.sleep(self.check_every)

        thread = threading.Thread(target=follow, name="model-watch", daemon=True)
        thread.start()
        return thread
