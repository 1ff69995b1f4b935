"""Convert a version's Keras CNNs to LiteRT models beside them (see moodwatch.litert).

Run when a version is saved (trainer.versioning); for versions saved before, call
`convert_version(folder)` or `python -m trainer.convert FOLDER...`. Each conversion is checked
before it is kept: the Keras model and the converted one score the same inputs, and a largest
difference above the bound (PARITY_BOUND for float32) leaves the version without that .tflite
(Keras serves it). The dynamic-range int8 conversions are made only where photos the version
never trained on are at hand (its test split: `HeldOut`), and kept only where the pipeline they
make labels those photos as the Keras one does, within HELD_OUT_ACCURACY_BOUND of its accuracy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moodwatch.faces import FACE_SIZE
from moodwatch.images import IMAGE_SIZE
from moodwatch.litert import (
    DYNAMIC_INT8,
    FLOAT32,
    HELD_OUT_ACCURACY_BOUND,
    LITE_MANIFEST,
    LiteModel,
    lite_name,
    parity_bound,
    read_manifest,
    sha256_of,
)
from moodwatch.modelio import is_sad
from moodwatch.pipeline import CLOSE_UP_MODEL_FILE, FACE_MODEL_FILE, Pipeline, Prepared
from moodwatch.registry import MODEL_FILE

log = logging.getLogger("moodwatch.trainer")
INPUT_SHAPES = {MODEL_FILE: (IMAGE_SIZE, IMAGE_SIZE, 3), FACE_MODEL_FILE: (FACE_SIZE, FACE_SIZE, 1),
                CLOSE_UP_MODEL_FILE: (FACE_SIZE, FACE_SIZE, 1)}
_SERVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> without augmentation
CHECK_BATCH = 8  # inputs scored both ways at conversion: noise, flat greys, black and white


class ConversionError(RuntimeError):
    """A model could not be converted, or its conversion does not score as the Keras model."""


@dataclass(frozen=True)
class HeldOut:
    """Photos a version never trained on (its test split), prepared, and their truth (1 = sad)."""

    prepared: list[Prepared]
    labels: np.ndarray


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


FLOAT16, INT8 = "float16", "int8"  # measured (benchmarks/crossval.py CONVERT=...), not served
QUANTIZATIONS = (FLOAT32, FLOAT16, DYNAMIC_INT8, INT8)


def to_tflite(model: Any, shape: tuple[int, ...], quantization: str = FLOAT32,
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
    if quantization == FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == DYNAMIC_INT8:  # int8 weights, activations quantized per call
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == INT8:
        if representative is None or not len(representative):
            raise ValueError("int8 quantization needs representative images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None]] for x in representative)
    elif quantization != FLOAT32:
        raise ValueError(f"unknown quantization {quantization!r}")
    return converter.convert()


def largest_difference(model: Any, lite_path: Path, x: np.ndarray) -> float:
    """The largest score difference between the Keras model and the LiteRT file on x."""
    keras_scores = np.asarray(model(x, training=False), dtype=np.float64).reshape(-1)
    lite_scores = LiteModel(lite_path, num_threads=1)(x).astype(np.float64).reshape(-1)
    if keras_scores.shape != lite_scores.shape:
        return float("inf")
    return float(np.max(np.abs(keras_scores - lite_scores)))


def convert_model(folder: Path, keras_name: str, quantization: str = FLOAT32) -> dict[str, Any]:
    """Convert one .keras file of the folder; its manifest entry. ConversionError where the
    conversion fails or does not score as the Keras model (no .tflite is left then)."""
    from moodwatch.modelio import load_model

    source, lite = folder / keras_name, folder / lite_name(keras_name, quantization)
    shape, bound = INPUT_SHAPES[keras_name], parity_bound(quantization)
    model = load_model(source)
    tmp = lite.with_name(f".{lite.name}.tmp")
    try:
        tmp.write_bytes(to_tflite(model, shape, quantization))
        difference = largest_difference(model, tmp, check_inputs(shape))
        if not difference <= bound:  # a NaN fails too
            raise ConversionError(f"{lite.name} scores differ from {keras_name} by {difference:.3g} "
                                  f"(at most {bound:g} allowed)")
        os.replace(tmp, lite)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"cannot convert {source}: {exc.__class__.__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return {"source": keras_name, "source_sha256": sha256_of(source), "sha256": sha256_of(lite),
            "quantization": quantization, "input": ["batch", *shape], "input_dtype": "uint8",
            "largest_difference_on_check_inputs": difference}


def held_out_check(folder: Path, held_out: HeldOut, lite_files: dict[str, Path]) -> dict[str, Any]:
    """The version's pipeline on these LiteRT files (by .keras name) against its Keras models, on
    photos it never trained on: accuracy of each, the largest P(sad) difference, labels changed."""
    keras_pipe = Pipeline.load(folder, runtime="keras")
    models = {name: LiteModel(path, quantization=DYNAMIC_INT8) for name, path in lite_files.items()}
    lite_pipe = Pipeline(models[MODEL_FILE], models.get(FACE_MODEL_FILE), models.get(CLOSE_UP_MODEL_FILE),
                         keras_pipe.combination, keras_pipe.batch_size)
    keras_scores, lite_scores = keras_pipe.scores(held_out.prepared), lite_pipe.scores(held_out.prepared)
    truth = np.asarray(held_out.labels) == 1
    k_sad, q_sad = is_sad(keras_scores), is_sad(lite_scores)
    return {"photos": len(truth), "accuracy_keras": float(np.mean(k_sad == truth)),
            "accuracy_litert": float(np.mean(q_sad == truth)),
            "largest_difference": float(np.max(np.abs(keras_scores - lite_scores))),
            "labels_changed": int(np.sum(k_sad != q_sad))}


def convert_version(folder: Path, strict: bool = True, held_out: HeldOut | None = None) -> dict[str, Any]:
    """Convert every CNN of a version folder to float32 and, with held-out photos, to dynamic-
    range int8; the manifest written. strict=False: a model that fails is logged and left to the
    next runtime (float32, then Keras; a trained version is never lost to its conversion)."""
    folder = Path(folder)
    entries = {k: v for k, v in read_manifest(folder).items() if (folder / k).is_file()}
    checks = read_manifest(folder, "checks")
    present = [name for name in INPUT_SHAPES if (folder / name).is_file()]
    for keras_name in present:
        name = lite_name(keras_name)
        try:
            entries[name] = convert_model(folder, keras_name)
        except ConversionError as exc:
            if strict:
                raise
            entries.pop(name, None)
            (folder / name).unlink(missing_ok=True)
            log.warning("%s: served by Keras", exc)
    _write_manifest(folder, entries, checks)
    if held_out is not None and len(held_out.labels) > 0 and MODEL_FILE in present:
        # The int8 files reach the manifest (and so serve) only once they passed the check.
        for keras_name in present:
            entries.pop(lite_name(keras_name, DYNAMIC_INT8), None)
        checks[DYNAMIC_INT8] = _quantized(folder, present, held_out, entries, strict)
        _write_manifest(folder, entries, checks)
    return entries


def _quantized(folder: Path, present: list[str], held_out: HeldOut, entries: dict[str, Any],
               strict: bool) -> dict[str, Any]:
    """Convert every CNN to dynamic-range int8 and check the pipeline they make on the held-out
    photos; their entries are added to `entries` only when it passes. The check's record."""
    made: dict[str, dict[str, Any]] = {}
    try:
        for keras_name in present:
            made[keras_name] = convert_model(folder, keras_name, DYNAMIC_INT8)
        check = held_out_check(folder, held_out, {k: folder / lite_name(k, DYNAMIC_INT8) for k in present})
    except Exception as exc:
        _remove(folder, present, DYNAMIC_INT8)
        if strict:
            raise
        log.warning("no dynamic-int8 conversion of %s (%s: %s): float32 serves", folder.name,
                    exc.__class__.__name__, exc)
        return {"kept": False, "error": f"{exc.__class__.__name__}: {exc}"}
    check["kept"] = abs(check["accuracy_litert"] - check["accuracy_keras"]) <= HELD_OUT_ACCURACY_BOUND
    if check["kept"]:
        entries.update({lite_name(k, DYNAMIC_INT8): entry for k, entry in made.items()})
    else:
        _remove(folder, present, DYNAMIC_INT8)
        log.warning("the dynamic-int8 conversions of %s scored %d test photos %.4f against the "
                    "Keras models' %.4f (at most %g apart): float32 serves", folder.name,
                    check["photos"], check["accuracy_litert"], check["accuracy_keras"],
                    HELD_OUT_ACCURACY_BOUND)
    return check


def _remove(folder: Path, keras_names: list[str], quantization: str) -> None:
    for keras_name in keras_names:
        (folder / lite_name(keras_name, quantization)).unlink(missing_ok=True)


def _write_manifest(folder: Path, entries: dict[str, Any], checks: dict[str, Any]) -> None:
    (folder / LITE_MANIFEST).write_text(json.dumps({"models": entries, "checks": checks}, indent=2) + "\n")


def held_out_of(folder: Path, photo_dirs: list[Path]) -> HeldOut:
    """A version's test split (params.json), found by SHA-256 among the photos of photo_dirs
    (the folders it was trained from, wherever they are now), prepared as the worker prepares
    them. ConversionError when none of them is found."""
    from moodwatch.pipeline import prepare_path

    try:
        listed = json.loads((folder / "params.json").read_text())["split"]["test"]
        wanted = {entry["sha256"]: entry["label"] for entry in listed}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"{folder} lists no test split in its params.json "
                              f"({exc.__class__.__name__}: {exc})") from exc
    found: dict[str, Path] = {}
    for d in photo_dirs:
        for p in sorted(Path(d).rglob("*")):
            if p.is_file() and len(found) < len(wanted):
                with open(p, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                if digest in wanted:
                    found.setdefault(digest, p)
    if len(found) < len(wanted):  # a check on some of them would not be the version's own
        raise ConversionError(f"{len(found)} of the {len(wanted)} test photos of {folder.name} are under "
                              f"{', '.join(map(str, photo_dirs))}: the int8 check needs all of them")
    faces = (folder / FACE_MODEL_FILE).is_file()
    prepared = [prepare_path(p, faces=faces) for p in found.values()]
    return HeldOut(prepared, np.array([int(wanted[h] == "sad") for h in found]))


def main(argv: list[str]) -> int:
    """python -m trainer.convert [--held-out-from DIR[,DIR]] FOLDER...: convert existing versions."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer.convert", description=(
        "Convert version folders' CNNs to LiteRT. --held-out-from: the folders the version was "
        "trained from; its test photos (params.json) are found there by SHA-256 and the "
        "dynamic-int8 conversion is made and checked on them."))
    parser.add_argument("folders", nargs="+", type=Path, metavar="VERSION_FOLDER")
    parser.add_argument("--held-out-from", default=None, metavar="DIR[,DIR]")
    args = parser.parse_args(argv)
    for folder in args.folders:
        try:
            held_out = (held_out_of(folder, [Path(d) for d in args.held_out_from.split(",")])
                        if args.held_out_from else None)
            entries = convert_version(folder, held_out=held_out)
        except Exception as exc:  # noqa: BLE001 - one line, whatever failed (LiteRT raises RuntimeError)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            print(f"error: {text}", file=sys.stderr)
            return 1
        for name, entry in entries.items():
            print(f"{folder}/{name}: largest difference {entry['largest_difference_on_check_inputs']:.2g}")
        check = read_manifest(folder, "checks").get(DYNAMIC_INT8)
        if held_out is not None and check and "photos" in check:
            print(f"{folder}: dynamic-int8 on {check['photos']} test photos: accuracy "
                  f"{check['accuracy_litert']:.4f} against Keras {check['accuracy_keras']:.4f}, "
                  f"{check['labels_changed']} labels changed, largest P(sad) difference "
                  f"{check['largest_difference']:.4f}: {'kept' if check['kept'] else 'not kept'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
