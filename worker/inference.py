"""Batched inference: decode in threads while a compiled forward pass runs on fixed shapes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from moodwatch.images import DEFAULT_MAX_PIXELS, ImageRejected, load_image
from moodwatch.modelio import label_for, load_model
from moodwatch.registry import Registry, Version
from moodwatch.settings import IMAGE_SIZE


@dataclass
class Prediction:
    path: str
    label: str | None = None
    confidence: float | None = None
    score: float | None = None
    error: str | None = None  # why this file could not be classified
    rejected: bool = False  # the file itself is bad (as opposed to a failure reading it)
    seconds: float = 0.0


class Classifier:
    """A loaded model and its compiled batch function; one per worker process."""

    def __init__(self, version: Version, batch_size: int = 32, decode_threads: int | None = None):
        import tensorflow as tf

        self.version = version
        self.batch_size = batch_size
        self.model = load_model(version.model_path)
        spec = tf.TensorSpec([batch_size, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)
        model = self.model

        # A fixed input signature: one trace, one graph, reused for every batch (partial batches
        # are padded), instead of model.predict's per-call overhead.
        @tf.function(input_signature=[spec], reduce_retracing=True)
        def forward(x):
            return model(x, training=False)

        self._forward = forward
        self._pool = ThreadPoolExecutor(
            max_workers=decode_threads or min(4, os.cpu_count() or 2),
            thread_name_prefix="decode",
        )

    def scores(self, x: np.ndarray) -> np.ndarray:
        """P(sad) for a (N, 256, 256, 3) uint8 array, N of any size."""
        out = np.empty(len(x), dtype=np.float32)
        for start in range(0, len(x), self.batch_size):
            chunk = x[start : start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                chunk = np.concatenate(
                    [chunk, np.zeros((self.batch_size - n, *chunk.shape[1:]), np.uint8)]
                )
            out[start : start + n] = self._forward(chunk).numpy().reshape(-1)[:n]
        return out

    def _decode(self, path: str, max_pixels: int) -> tuple[np.ndarray | None, str | None, bool]:
        try:
            return load_image(path, max_pixels), None, False
        except ImageRejected as exc:
            return None, exc.reason, True
        except FileNotFoundError:
            return None, f"file not found: {path} (not reachable from this worker)", False
        except OSError as exc:
            return None, f"cannot read file: {exc.strerror or exc}", False

    def classify_paths(
        self, paths: Sequence[str], max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> list[Prediction]:
        """Classify files; a bad one gets its reason and the others are still classified."""
        return list(self.iter_classify(paths, max_pixels))

    def iter_classify(
        self, paths: Iterable[str], max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Iterator[Prediction]:
        paths = list(paths)
        t0 = time.perf_counter()
        futures: list[Future] = [self._pool.submit(self._decode, p, max_pixels) for p in paths]
        # Forward passes run on the chunk at hand while the pool decodes the next ones.
        for start in range(0, len(paths), self.batch_size):
            chunk_paths = paths[start : start + self.batch_size]
            decoded = [f.result() for f in futures[start : start + self.batch_size]]
            good = [i for i, (arr, _, _) in enumerate(decoded) if arr is not None]
            scores = self.scores(np.stack([decoded[i][0] for i in good])) if good else []
            by_index = dict(zip(good, scores, strict=True))
            elapsed = (time.perf_counter() - t0) / max(1, start + len(chunk_paths))
            for i, path in enumerate(chunk_paths):
                arr, error, rejected = decoded[i]
                if arr is None:
                    yield Prediction(path, error=error, rejected=rejected, seconds=elapsed)
                    continue
                score = float(by_index[i])
                label, confidence = label_for(score)
                yield Prediction(path, label, confidence, score, seconds=elapsed)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ModelCache:
    """Holds the current model of a process and reloads it when the registry's pointer moves."""

    def __init__(self, registry: Registry, batch_size: int = 32, check_every: float = 2.0):
        self.registry = registry
        self.batch_size = batch_size
        self.check_every = check_every
        self._classifier: Classifier | None = None
        self._checked_at = 0.0

    def get(self) -> Classifier:
        now = time.monotonic()
        if self._classifier is None or now - self._checked_at >= self.check_every:
            self._checked_at = now
            current = self.registry.require_current()
            if self._classifier is None or self._classifier.version != current:
                old, self._classifier = self._classifier, Classifier(current, self.batch_size)
                if old is not None:
                    old.close()
        return self._classifier
