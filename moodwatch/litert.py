"""LiteRT copies of a version's Keras CNNs, for serving.

The Keras files stay the source of truth (training, fine-tuning); `trainer.convert` writes a
float32 ``.tflite`` beside each one when a version is saved, a dynamic-range int8 one
(``.dynamic-int8.tflite``) where it scores the version's own test photos as the Keras models do,
and a manifest (LITE_MANIFEST) with the SHA-256 of both files and the score differences measured
at conversion. A version is served by LiteRT only where the manifest vouches for the pair: a
``.keras`` replaced, or a ``.tflite`` copied from another version, is served by Keras again
instead of by a model it was not converted from. LiteRT runs these CNNs with XNNPACK without
importing TensorFlow. Which conversion serves is MOODWATCH_CNN_PRECISION (`served_lite_file`).

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
FLOAT32, DYNAMIC_INT8 = "float32", "dynamic-int8"
PRECISIONS = (DYNAMIC_INT8, FLOAT32)  # what MOODWATCH_CNN_PRECISION may name
# The largest difference in a score (a probability) between a Keras model and its conversion
# that counts as the same model: float32 kernels differ in summation order, nothing more.
PARITY_BOUND = 1e-4
# An int8 conversion rounds weights and activations to 8 bits, so its scores move (by 0.005-0.012
# on real photos, measured): this bound on the fixed check inputs only catches a broken
# conversion. What admits it is the version's own test photos: its accuracy on them may differ
# from the Keras models' by at most HELD_OUT_ACCURACY_BOUND (trainer.convert).
QUANTIZED_PARITY_BOUND = 0.05
HELD_OUT_ACCURACY_BOUND = 0.005


def parity_bound(quantization: str) -> float:
    return PARITY_BOUND if quantization == FLOAT32 else QUANTIZED_PARITY_BOUND


def lite_name(keras_name: str, quantization: str = FLOAT32) -> str:
    """model.keras -> model.tflite (float32), model.dynamic-int8.tflite."""
    stem = Path(keras_name).stem
    return f"{stem}.tflite" if quantization == FLOAT32 else f"{stem}.{quantization}.tflite"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path, part: str = "models") -> dict[str, Any]:
    """The manifest's entries by .tflite name (or its int8 checks by quantization, part
    "checks"); empty where there is none (or it is unreadable)."""
    try:
        entries = json.loads((Path(folder) / LITE_MANIFEST).read_text()).get(part, {})
    except (OSError, ValueError, AttributeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def vouched_lite_file(folder: Path, keras_name: str, quantization: str = FLOAT32) -> Path | None:
    """The .tflite converted from this very .keras file with this quantization, or None."""
    folder = Path(folder)
    lite, source = folder / lite_name(keras_name, quantization), folder / keras_name
    entry = read_manifest(folder).get(lite.name)
    if not isinstance(entry, dict) or not lite.is_file() or not source.is_file():
        return None
    if entry.get("quantization", FLOAT32) != quantization:
        return None
    if quantization != FLOAT32:  # served only after it passed the version's held-out check
        check = read_manifest(folder, "checks").get(quantization)
        if not isinstance(check, dict) or check.get("kept") is not True:
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


def served_lite_file(folder: Path, keras_name: str, precision: str = DYNAMIC_INT8) -> Path | None:
    """The conversion that serves a CNN: for dynamic-int8 its int8 conversion where the version
    holds one vouched for, else the float32 one; for float32 that one only. None: Keras serves."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown CNN precision {precision!r} (one of {', '.join(PRECISIONS)})")
    tried = (DYNAMIC_INT8, FLOAT32) if precision == DYNAMIC_INT8 else (FLOAT32,)
    return next((f for q in tried if (f := vouched_lite_file(folder, keras_name, q)) is not None), None)


def default_threads() -> int:
    """XNNPACK threads for one process: the worker sets TF_NUM_INTRAOP_THREADS to its share of
    the cores (cores / processes), the one knob for both runtimes; elsewhere all the cores."""
    try:
        return max(1, int(os.environ.get("TF_NUM_INTRAOP_THREADS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


# Images per interpreter call. A call of 32 of the whole-image CNN's 256 px images holds tens of
# MB of activations, far past a core's cache; calls of a few images each run from the cache, and
# each image's scores are its own whatever the call (the activations of dynamic-range int8 are
# quantized per image): measured on 64 web photos, one thread, the whole-image CNN in
# dynamic-range int8 0.92 ms an image in calls of 1-2 against 1.29 in calls of 32, the face
# CNN 0.30 ms a crop against 0.33-0.36, the scores the same to the bit (benchmarks/lite_calls.py).
LITE_CALL_IMAGES = 2


class LiteModel:
    """One LiteRT interpreter for a model of one uint8 image input and one score per image,
    callable like the Pipeline's compiled Keras functions on any number of images. Its input is
    sized once, to `call_images` images: a batch runs as calls of that many, the last one padded
    with blank images whose scores are dropped (so the interpreter is never resized). Calls are
    serialised, as an interpreter must not run in two threads at once."""

    def __init__(self, path: Path, num_threads: int | None = None, quantization: str = FLOAT32,
                 call_images: int = LITE_CALL_IMAGES):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.quantization = quantization
        self.call_images = call_images
        threads = num_threads or default_threads()
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"LiteRT model {self.path} takes or gives several tensors")
        self._input, self._output = inputs[0]["index"], outputs[0]["index"]
        if int(inputs[0]["shape_signature"][0]) != -1:  # the interpreter is resized to call_images
            raise ValueError(f"LiteRT model {self.path} takes a fixed batch of "
                             f"{int(inputs[0]['shape'][0])} image(s), not any number "
                             "(python -m trainer.convert writes a free batch dimension)")
        self.dtype = inputs[0]["dtype"]
        # Keras-like shapes (None: any batch), so the worker's shape checks read both alike.
        self.input_shape = (None, *(int(d) for d in inputs[0]["shape_signature"][1:]))
        self.output_shape = (None, *(int(d) for d in outputs[0]["shape_signature"][1:]))
        self._interpreter.resize_tensor_input(self._input, [call_images, *self.input_shape[1:]],
                                              strict=True)
        self._interpreter.allocate_tensors()
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        n, step = x.shape[0], self.call_images
        with self._lock:
            scores = []
            for start in range(0, n, step):
                part = x[start : start + step]
                if len(part) < step:
                    part = np.concatenate([part, np.zeros((step - len(part), *x.shape[1:]), x.dtype)])
                self._interpreter.set_tensor(self._input, part)
                self._interpreter.invoke()
                scores.append(self._interpreter.get_tensor(self._output).copy())
            if not scores:
                return np.zeros((0, *self.output_shape[1:]), np.float32)
            return np.concatenate(scores)[:n]
