"""LiteRT copies of a version's Keras CNNs, for serving.

The Keras files stay the source of truth (training, fine-tuning); `trainer.convert` writes a
float32 ``.tflite`` beside each one when a version is saved, and a manifest (LITE_MANIFEST) with
the SHA-256 of both files and the largest score difference measured at conversion. A version is
served by LiteRT only where the manifest vouches for the pair: a ``.keras`` replaced, or a
``.tflite`` copied from another version, is served by Keras again instead of by a model it was
not converted from. LiteRT runs these CNNs with XNNPACK without importing TensorFlow.

The converted models take the same uint8 arrays the Keras models take (the cast and the rescale
are inside them): `moodwatch.pipeline.prepare_bytes` stays the one preprocessing function.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("moodwatch.litert")
LITE_MANIFEST = "litert.json"
# The largest difference in a score (a probability) between a Keras model and its conversion
# that counts as the same model: float32 kernels differ in summation order, nothing more.
PARITY_BOUND = 1e-4


def lite_name(keras_name: str) -> str:
    """model.keras -> model.tflite."""
    return Path(keras_name).with_suffix(".tflite").name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest's entries by .tflite name; empty where there is none (or it is unreadable)."""
    try:
        entries = json.loads((Path(folder) / LITE_MANIFEST).read_text()).get("models", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def vouched_lite_file(folder: Path, keras_name: str) -> Path | None:
    """The .tflite converted from this very .keras file, or None (Keras serves it)."""
    folder = Path(folder)
    lite, source = folder / lite_name(keras_name), folder / keras_name
    entry = read_manifest(folder).get(lite.name)
    if not isinstance(entry, dict) or not lite.is_file() or not source.is_file():
        return None
    try:
        same = (entry.get("source") == keras_name and entry.get("source_sha256") == sha256_of(source)
                and entry.get("sha256") == sha256_of(lite))
    except OSError:
        return None
    if not same:
        log.warning("%s was not converted from %s as it is now: serving the Keras model", lite, source)
        return None
    return lite


def default_threads() -> int:
    """XNNPACK threads for one process: the worker sets TF_NUM_INTRAOP_THREADS to its share of
    the cores (cores / processes), the one knob for both runtimes; elsewhere all the cores."""
    try:
        return max(1, int(os.environ.get("TF_NUM_INTRAOP_THREADS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


class LiteModel:
    """One LiteRT interpreter for a model of one uint8 image input and one score per image,
    callable like the Pipeline's compiled Keras functions. The batch dimension is resized to
    each call's count (a resize costs only when the count changes); calls are serialised, as
    an interpreter must not run in two threads at once."""

    def __init__(self, path: Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        threads = num_threads or default_threads()
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"LiteRT model {self.path} takes or gives several tensors")
        self._input, self._output = inputs[0]["index"], outputs[0]["index"]
        self.dtype = inputs[0]["dtype"]
        # Keras-like shapes (None: any batch), so the worker's shape checks read both alike.
        self.input_shape = (None, *(int(d) for d in inputs[0]["shape_signature"][1:]))
        self.output_shape = (None, *(int(d) for d in outputs[0]["shape_signature"][1:]))
        self._batch: int | None = None
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        with self._lock:
            if x.shape[0] != self._batch:
                self._interpreter.resize_tensor_input(self._input, list(x.shape), strict=True)
                self._interpreter.allocate_tensors()
                self._batch = x.shape[0]
            self._interpreter.set_tensor(self._input, x)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).copy()
