"""Batched inference: decode (and detect faces) in threads while compiled forward passes run."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moodwatch.faces import FACE_SIZE
from moodwatch.images import DEFAULT_MAX_PIXELS, IMAGE_SIZE, ImageInfo, ImageRejected
from moodwatch.litert import DYNAMIC_INT8
from moodwatch.modelio import ModelLoadError, label_for
from moodwatch.pipeline import (
    CLOSE_UP_MODEL_FILE,
    FACE_MODEL_FILE,
    Pipeline,
    Prepared,
    prepare_bytes,
    prepare_path,
)
from moodwatch.registry import MODEL_FILE, Registry, RegistryError, Version

log = logging.getLogger("moodwatch.worker")
WORKER_MISSING_NOTE = " (not reachable from this worker)"
# A version that failed is loaded again when its files or the pointer change, or after this
# long (a detector file fixed elsewhere): not every 2 s, which would spend the worker's CPU.
RELOAD_FAILED_SECONDS = 60.0


class ModelUnavailable(ModelLoadError):
    """No model can serve a job now; the reason was logged once when it arose. A ModelLoadError,
    so the task retries it with backoff, and its text is short: Celery logs it at every retry."""


def _shape(dims: tuple) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


def shape_problem(model: Any, expected: tuple[int, ...], path: Path) -> str | None:
    """Why a model cannot take the worker's inputs or give one score per image, or None."""
    try:
        inputs, outputs = model.input_shape, model.output_shape
    except (AttributeError, ValueError):  # not a built functional model: the warm-up tells
        return None
    if isinstance(inputs, list) or isinstance(outputs, list):
        return f"model file {path} takes or gives several tensors, not one image and one score"
    fits = len(inputs) == len(expected) + 1 and all(
        d in (None, e) for d, e in zip(inputs[1:], expected, strict=True))
    if not fits:
        return (f"model file {path} takes inputs of shape {_shape(inputs[1:])}, not the "
                f"{_shape(expected)} images the worker gives it")
    if None in outputs[1:]:  # sized by its input (a convolution's map): ask for the worker's
        try:
            outputs = tuple(model.compute_output_shape((1, *expected)))
        except Exception as exc:  # noqa: BLE001 - any failure means the model cannot take them
            return f"model file {path} cannot take {_shape(expected)} images: {first_line(exc)}"
    if math.prod(d or 0 for d in outputs[1:]) != 1:
        return f"model file {path} gives outputs of shape {_shape(outputs[1:])}, not one score per image"
    return None


def check_shapes(pipeline: Pipeline, folder: Path) -> None:
    """Refuse a version whose models do not fit the worker's inputs, before any file is scored."""
    face_shape = (FACE_SIZE, FACE_SIZE, 1)
    for model, name, shape in ((pipeline.whole, MODEL_FILE, (IMAGE_SIZE, IMAGE_SIZE, 3)),
                               (pipeline.face, FACE_MODEL_FILE, face_shape),
                               (pipeline.close_up, CLOSE_UP_MODEL_FILE, face_shape)):
        problem = shape_problem(model, shape, folder / name) if model is not None else None
        if problem:
            raise ModelLoadError(problem)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An error's class and the first line of its text: TensorFlow's run to pages."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{exc.__class__.__name__}: {text[:limit]}"


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
    # The batch's time limit came before this file's decode began: it has no outcome, and the
    # caller sends it again.
    unstarted: bool = False


class Classifier:
    """A loaded model version and its compiled batch functions; one per worker process."""

    def __init__(self, version: Version, batch_size: int = 32, decode_threads: int | None = None,
                 missing_note: str = "", precision: str = DYNAMIC_INT8):
        self.version = version
        self.batch_size = batch_size
        self.missing_note = missing_note  # appended to "file not found: ..." (the worker says where)
        try:
            self.pipeline = Pipeline.load(version.path, batch_size, precision=precision)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load model {version.path}: {first_line(exc)}") from exc
        check_shapes(self.pipeline, version.path)
        self.decode_threads = decode_threads or min(4, os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(max_workers=self.decode_threads, thread_name_prefix="decode")

    def _decode(self, source: str | bytes, max_pixels: int,
                info: ImageInfo | None = None) -> tuple[Prepared | None, str | None, bool]:
        """Prepare a file by path, or bytes a caller has already read (and hashed, and perhaps
        inspected: info) itself."""
        try:
            if isinstance(source, bytes):
                prepared = prepare_bytes(source, max_pixels, faces=self.pipeline.uses_faces, info=info)
                return prepared, None, False
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
                       max_pixels: int = DEFAULT_MAX_PIXELS,
                       time_limit: float | None = None,
                       images: Sequence[ImageInfo | None] | None = None) -> list[Prediction]:
        """Classify bytes already read: the worker reads each file once, safely, and hashes them
        (and inspects them, images: each one's ImageInfo, or None to inspect it here)."""
        return list(self.iter_classify(names, max_pixels, sources=blobs, time_limit=time_limit,
                                       images=images))

    def iter_classify(
        self, paths: Iterable[str], max_pixels: int = DEFAULT_MAX_PIXELS,
        sources: Sequence[bytes] | None = None, time_limit: float | None = None,
        images: Sequence[ImageInfo | None] | None = None,
    ) -> Iterator[Prediction]:
        """Predictions in order. time_limit: seconds the decoding of all of them may take; past
        it a file still decoding is failed and one not begun comes back `unstarted`."""
        paths = list(paths)
        t0 = time.perf_counter()
        deadline = None if time_limit is None else t0 + time_limit
        pool = self._pool
        inputs = paths if sources is None else sources
        infos = images if images is not None and sources is not None else [None] * len(paths)
        futures: list[Future] = [pool.submit(self._decode, s, max_pixels, info)
                                 for s, info in zip(inputs, infos, strict=True)]
        # Forward passes run on the chunk at hand while the pool decodes the next ones.
        for start in range(0, len(paths), self.batch_size):
            chunk_paths = paths[start : start + self.batch_size]
            decoded = [self._outcome(f, pool, deadline, time_limit)
                       for f in futures[start : start + self.batch_size]]
            good = [i for i, (prep, _, _) in enumerate(decoded) if prep is not None]
            scores = self.pipeline.scores([decoded[i][0] for i in good]) if good else []
            by_index = dict(zip(good, scores, strict=True))
            elapsed = (time.perf_counter() - t0) / max(1, start + len(chunk_paths))
            for i, path in enumerate(chunk_paths):
                prep, error, rejected = decoded[i]
                if prep is None:  # no error either: not begun before the time limit
                    yield Prediction(path, error=error, rejected=rejected, batch_seconds_per_file=elapsed,
                                     unstarted=error is None)
                    continue
                score = float(by_index[i])
                label, confidence = label_for(score)
                faces = prep.faces.relative_boxes() if prep.faces is not None else None
                yield Prediction(path, label, confidence, score, batch_seconds_per_file=elapsed, faces=faces)

    def _outcome(self, future: Future, pool: ThreadPoolExecutor, deadline: float | None,
                 time_limit: float | None) -> tuple[Prepared | None, str | None, bool]:
        """A decode's result, waited for until the deadline at most. Past it a decode not begun
        is cancelled (no error: the caller sends the file again) and one still running is given
        up: its thread cannot be stopped (the decoder is C code) and ends on its own, in a pool
        this classifier no longer uses, so later batches do not queue behind it."""
        left = None if deadline is None else max(0.0, deadline - time.perf_counter())
        try:
            return future.result(timeout=left)
        except TimeoutError:
            if future.cancel():
                return None, None, False
            if future.done():  # it finished between the timeout and the cancel
                return future.result()
            if self._pool is pool:
                self._pool = ThreadPoolExecutor(max_workers=self.decode_threads, thread_name_prefix="decode")
                pool.shutdown(wait=False)
            return None, (f"decoding took longer than the batch's time limit ({time_limit:g} s): "
                          "given up, not classified"), False

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

    def __init__(self, registry: Registry, batch_size: int = 32, check_every: float = 2.0,
                 precision: str = DYNAMIC_INT8):
        self.registry = registry
        self.batch_size = batch_size
        self.precision = precision  # MOODWATCH_CNN_PRECISION
        self.check_every = check_every
        self._classifier: Classifier | None = None
        self._retired: list[Classifier] = []  # replaced, closed by the next get() (no job uses them)
        self._load_lock = threading.Lock()  # one load at a time
        self._checked_at = 0.0
        self._watching = False
        self._problem: str | None = None  # what was last logged as the reason no model serves
        self._failed: tuple[tuple, float] | None = None  # the stamp of the version refused, and when

    def _load(self, version: Version) -> Classifier:
        """The version loaded and warmed up; ModelLoadError for anything that stops it serving."""
        t0 = time.perf_counter()
        classifier = Classifier(version, self.batch_size, missing_note=WORKER_MISSING_NOTE,
                                precision=self.precision)
        try:
            classifier.warm_up()
        except Exception as exc:  # e.g. a shape the checks could not see: the model cannot serve
            classifier.close()
            raise ModelLoadError(f"model {version.name} failed its warm-up: {first_line(exc)}") from exc
        log.info("model %s loaded and warmed up in %.1fs on %s (%s; pid %d)", version.name,
                 time.perf_counter() - t0, classifier.pipeline.runtime, classifier.pipeline.precision,
                 os.getpid())
        return classifier

    def _report(self, problem: str | None) -> None:
        """Log why no model serves once, when the reason changes (not at every check of every
        process's watcher thread)."""
        if problem is not None and problem != self._problem:
            held = self._classifier
            meanwhile = f" ({held.version.name} serves meanwhile)" if held is not None else ""
            log.warning("model cannot serve: %s%s", problem, meanwhile)
        self._problem = problem

    def _refuse(self, problem: str) -> ModelUnavailable:
        self._report(problem)
        return ModelUnavailable(
            "no model can serve yet (the reason is this worker's last 'model cannot serve' warning)")

    def refresh(self) -> Classifier:
        """Load and warm up the current version unless it is the one held. A version that cannot
        serve raises ModelUnavailable, and is tried again only once its files or the pointer
        change, or RELOAD_FAILED_SECONDS later."""
        with self._load_lock:
            try:
                current = self.registry.require_current()
            except (RegistryError, OSError) as exc:
                raise self._refuse(str(exc)) from exc
            held = self._classifier
            if held is not None and held.version == current:
                self._report(None)
                return held
            stamp = _stamp(current)
            if self._failed is not None and self._failed[0] == stamp \
                    and time.monotonic() - self._failed[1] < RELOAD_FAILED_SECONDS:
                raise self._refuse(self._problem or f"model {current.name} cannot serve")
            try:
                loaded = self._load(current)
            except ModelLoadError as exc:
                self._failed = (stamp, time.monotonic())
                raise self._refuse(str(exc)) from exc
            self._failed, self._classifier = None, loaded
            self._report(None)
            if held is not None:
                self._retired.append(held)
            return loaded

    def get(self) -> Classifier:
        """The model for the next job (jobs run one at a time in a worker process). While a new
        version cannot serve, the one held goes on serving."""
        while self._retired:
            self._retired.pop().close()
        held = self._classifier
        now = time.monotonic()
        if held is None or (not self._watching and now - self._checked_at >= self.check_every):
            self._checked_at = now
            try:
                return self.refresh()  # waits for a load the watcher thread has under way
            except ModelUnavailable:
                if held is None:
                    raise
        return held

    def readiness(self) -> tuple[str, str | None, str | None]:
        """(state, model serving, why none can) for the worker's heartbeat (moodwatch.heartbeat):
        ready while a version serves (the old one, while a new one fails), else loading until a
        load has failed, then unavailable. Reads two attributes: never waits on a load."""
        held, problem = self._classifier, self._problem
        if held is not None:
            return "ready", held.version.name, None
        return ("unavailable", None, problem) if problem else ("loading", None, None)

    def watch(self) -> threading.Thread:
        """Load and warm up the current model now, then follow the pointer, in the background."""
        self._watching = True

        def follow() -> None:
            while True:
                try:
                    self.refresh()
                except ModelUnavailable:  # logged once by refresh; jobs retry meanwhile
                    pass
                except Exception as exc:  # a bug, not a model's fault: said once too
                    self._report(first_line(exc))
                time.sleep(self.check_every)

        thread = threading.Thread(target=follow, name="model-watch", daemon=True)
        thread.start()
        return thread


def _stamp(version: Version) -> tuple:
    """What a version is made of, cheaply (a stat per file): a refused version whose stamp is
    unchanged is refused again without loading it."""
    try:
        files = sorted((p.name, st.st_size, st.st_mtime_ns) for p in version.path.iterdir()
                       if p.is_file() for st in (p.stat(),))
    except OSError:
        files = []
    return version.name, tuple(files)
