"""Convert a version's Keras CNNs to float32 LiteRT models beside them (see moodwatch.litert).

Run when a version is saved (trainer.versioning); for versions saved before, call
`convert_version(folder)` or `python -m trainer.convert FOLDER...`. Each conversion is checked
before it is kept: the Keras model and the converted one score the same inputs, and a largest
difference above PARITY_BOUND leaves the version without that .tflite (Keras serves it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from moodwatch.faces import FACE_SIZE
from moodwatch.images import IMAGE_SIZE
from moodwatch.litert import LITE_MANIFEST, PARITY_BOUND, LiteModel, lite_name, read_manifest, sha256_of
from moodwatch.pipeline import CLOSE_UP_MODEL_FILE, FACE_MODEL_FILE
from moodwatch.registry import MODEL_FILE

log = logging.getLogger("moodwatch.trainer")
INPUT_SHAPES = {MODEL_FILE: (IMAGE_SIZE, IMAGE_SIZE, 3), FACE_MODEL_FILE: (FACE_SIZE, FACE_SIZE, 1),
                CLOSE_UP_MODEL_FILE: (FACE_SIZE, FACE_SIZE, 1)}
_SERVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> without augmentation
CHECK_BATCH = 8  # inputs scored both ways at conversion: noise, flat greys, black and white


class ConversionError(RuntimeError):
    """A model could not be converted, or its conversion does not score as the Keras model."""


def check_inputs(shape: tuple[int, ...], n: int = CHECK_BATCH) -> np.ndarray:
    """Fixed uint8 inputs spanning the pixel range (the same every run)."""
    x = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    x[0], x[1], x[2] = 0, 255, 128
    return x


def without_augmentation(model: Any) -> Any:
    """The same trained layers without the random augmentation ones, which pass images through
    unchanged at inference but some of which (RandomGrayscale) still advance a seed variable
    there, which the converter cannot take. Only a chain of layers is rebuilt; a model with
    branches (or without augmentation) is returned as it is."""
    import keras

    if model in _SERVED:  # calling the layers again gave them a second node: rebuilt once
        return _SERVED[model]
    layers = model.layers[1:]
    if not any(type(layer).__name__.startswith("Random") for layer in layers):
        return model
    if any(len(layer._inbound_nodes) != 1 for layer in layers):  # shared or branching layers
        return model
    inputs = keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype, name="image")
    x = inputs
    for layer in layers:
        if not type(layer).__name__.startswith("Random"):
            x = layer(x)
    _SERVED[model] = keras.Model(inputs, x, name=model.name)
    return _SERVED[model]


QUANTIZATIONS = ("float32", "float16", "dynamic-int8", "int8")


def to_tflite(model: Any, shape: tuple[int, ...], quantization: str = "float32",
              representative: np.ndarray | None = None) -> bytes:
    """The model's inference pass as a LiteRT flatbuffer, taking uint8 images of any batch size
    (the cast to float and the rescale inside it, as the Keras model does them).

    quantization: float32; float16 (weights stored in half precision); dynamic-int8 (int8
    weights, activations quantized per call); int8 (weights and activations in int8, their
    ranges measured on `representative`, images of the curated photos; input and output stay
    uint8 and float32)."""
    import tensorflow as tf

    served = without_augmentation(model)

    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.uint8)], autograph=False)
    def forward(x):
        return served(x, training=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], model)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic-int8":  # int8 weights, activations quantized per call
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        if representative is None or not len(representative):
            raise ValueError("int8 quantization needs representative images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None]] for x in representative)
    elif quantization != "float32":
        raise ValueError(f"unknown quantization {quantization!r}")
    return converter.convert()


def largest_difference(model: Any, lite_path: Path, x: np.ndarray) -> float:
    """The largest score difference between the Keras model and the LiteRT file on x."""
    keras_scores = np.asarray(model(x, training=False), dtype=np.float64).reshape(-1)
    lite_scores = LiteModel(lite_path, num_threads=1)(x).astype(np.float64).reshape(-1)
    if keras_scores.shape != lite_scores.shape:
        return float("inf")
    return float(np.max(np.abs(keras_scores - lite_scores)))


def convert_model(folder: Path, keras_name: str) -> dict[str, Any]:
    """Convert one .keras file of the folder; its manifest entry. ConversionError where the
    conversion fails or does not score as the Keras model (no .tflite is left then)."""
    from moodwatch.modelio import load_model

    source, lite = folder / keras_name, folder / lite_name(keras_name)
    shape = INPUT_SHAPES[keras_name]
    model = load_model(source)
    tmp = lite.with_name(f".{lite.name}.tmp")
    try:
        tmp.write_bytes(to_tflite(model, shape))
        difference = largest_difference(model, tmp, check_inputs(shape))
        if not difference <= PARITY_BOUND:  # a NaN fails too
            raise ConversionError(f"{lite.name} scores differ from {keras_name} by {difference:.3g} "
                                  f"(at most {PARITY_BOUND:g} allowed)")
        os.replace(tmp, lite)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"cannot convert {source}: {exc.__class__.__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return {"source": keras_name, "source_sha256": sha256_of(source), "sha256": sha256_of(lite),
            "quantization": "float32", "input": ["batch", *shape], "input_dtype": "uint8",
            "largest_difference_on_check_inputs": difference}


def convert_version(folder: Path, strict: bool = True) -> dict[str, Any]:
    """Convert every CNN of a version folder; the manifest written. strict=False: a model that
    fails is logged and left to Keras (a trained version is never lost to its conversion)."""
    folder = Path(folder)
    entries = {k: v for k, v in read_manifest(folder).items() if (folder / k).is_file()}
    for keras_name in INPUT_SHAPES:
        if not (folder / keras_name).is_file():
            continue
        try:
            entries[lite_name(keras_name)] = convert_model(folder, keras_name)
        except ConversionError as exc:
            if strict:
                raise
            entries.pop(lite_name(keras_name), None)
            (folder / lite_name(keras_name)).unlink(missing_ok=True)
            log.warning("%s: served by Keras", exc)
    (folder / LITE_MANIFEST).write_text(json.dumps({"models": entries}, indent=2) + "\n")
    return entries


def main(argv: list[str]) -> int:
    """python -m trainer.convert FOLDER...: convert existing versions (a version folder each)."""
    if not argv:
        print("usage: python -m trainer.convert VERSION_FOLDER...", file=sys.stderr)
        return 2
    for folder in argv:
        try:
            entries = convert_version(Path(folder))
        except (ConversionError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for name, entry in entries.items():
            print(f"{folder}/{name}: largest difference {entry['largest_difference_on_check_inputs']:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
