"""A model version as a whole: whole-image CNN, optional face model, and how they combine.

`prepare_bytes` is the one preprocessing function (train and serve): the 256x256 RGB image and,
for versions that use faces, the face crops. `Pipeline` turns prepared images into calibrated
P(sad). TensorFlow is imported only when a Pipeline runs a Keras model: `Pipeline.load` serves
each CNN by its LiteRT conversion where the version holds one (moodwatch.litert), without it.

How a photo is scored (versions with a face model):
- faces found: the mean of the face model's logits over the faces (largest four, weighted by
  area) is averaged with the whole-image model's logit;
- the photo is a close-up (a face crop itself, <= 64 px, like FER-2013's): the face model alone,
  as it was before fine-tuning on curated photos (CLOSE_UP_MODEL_FILE) when the version has it;
- no face found: the whole-image model alone.
Then a temperature per regime (faces found, whole image), fitted on the validation split
(trainer.calibration), makes the confidence mean what it says.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moodwatch.faces import (
    FACE_SIZE,
    FaceInputs,
    before_detection,
    check_detector,
    detection_settings,
    face_inputs,
)
from moodwatch.images import DEFAULT_MAX_PIXELS, IMAGE_SIZE, ImageInfo, decode_rgb, resize
from moodwatch.litert import DYNAMIC_INT8, FLOAT32, LiteModel, lite_name, served_lite_file
from moodwatch.vocab import Regime


class _KerasTracingNotes(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning about Keras's own training,
    evaluation and prediction functions (TensorFlowTrainer._make_function): every model traces
    its own once, the warning counts all models' together (by code object), and a retrain or a
    comparison of versions makes several. Nothing a user can act on; any other function's
    retracing is still said."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message
                    and "TensorFlowTrainer._make_function" in message)


# On TensorFlow's logger, which TensorFlow then uses as it is: set before any model is fitted.
logging.getLogger("tensorflow").addFilter(_KerasTracingNotes())

PIPELINE_FILE = "pipeline.json"
FACE_MODEL_FILE = "face.keras"
# The face model as learned from the large face-crop set, before any fine-tuning on curated
# photos: it scores close-ups, where it is both more accurate and better calibrated.
CLOSE_UP_MODEL_FILE = "face-closeup.keras"
EPS = 1e-6


@dataclass
class Prepared:
    image: np.ndarray  # (256, 256, 3) uint8 RGB
    faces: FaceInputs | None = None


def prepare_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, faces: bool = False,
                  info: ImageInfo | None = None) -> Prepared:
    """The model's inputs from checked bytes (info: their inspection, where it was made already)."""
    rgb = decode_rgb(data, max_pixels, info)
    return Prepared(resize(rgb), face_inputs(rgb) if faces else None)


def prepare_path(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, faces: bool = False) -> Prepared:
    return prepare_bytes(Path(path).read_bytes(), max_pixels, faces)


def prepare_bytes_before_cnn(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, faces: bool = False) -> None:
    """What prepare_bytes does before any CNN runs (the checks, the decode, the 256 px image; for
    faces, the grey image and the detector's input), by the same functions: `moodwatch bench`'s
    decode floor, the limit beside its end-to-end figure."""
    rgb = decode_rgb(data, max_pixels)
    resize(rgb)
    if faces:
        before_detection(rgb)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def area_weighted(logits: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> float:
    """A photo's face logit: its faces' logits averaged, each weighted by its box's area."""
    area = np.array([w * h for _, _, w, h in boxes], dtype=np.float64)
    return float(np.sum(logits * area) / area.sum())


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass
class Combination:
    face_weight: float = 0.5  # share of the face logit when faces are found
    temperature: float = 1.0  # for photos scored by the whole image alone
    # Photos with faces are right far more often than photos scored by the whole image alone:
    # one temperature for both leaves one overconfident and the other timid.
    face_temperature: float | None = None  # None: the same as temperature (older versions)
    # Close-ups are scored by the face model alone, as calibrated as it came from its own
    # (much larger) training set; the curated photos hold too few close-ups to refit it.
    close_up_temperature: float = 1.0
    # Added to each regime's calibrated logit: a threshold fitted on the validation split where
    # one label's errors outnumber the other's (0 in versions saved before it; positive: sadder).
    shift: float = 0.0
    face_shift: float = 0.0
    regimes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> Combination | None:
        path = folder / PIPELINE_FILE
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        face_t = d.get("face_temperature")
        return cls(float(d.get("face_weight", 0.5)), float(d.get("temperature", 1.0)),
                   None if face_t is None else float(face_t), float(d.get("close_up_temperature", 1.0)),
                   float(d.get("shift", 0.0)), float(d.get("face_shift", 0.0)))

    def to_json(self) -> dict[str, Any]:
        return {"face_weight": self.face_weight, "temperature": self.temperature,
                "face_temperature": self.face_temperature,
                "close_up_temperature": self.close_up_temperature,
                "shift": self.shift, "face_shift": self.face_shift,
                "rule": "faces: mix of face and whole logits; close-up: face; none: whole",
                "face_detection": detection_settings(),
                "regimes_on_validation": self.regimes}


def combine_logits(whole: np.ndarray, face: list[np.ndarray | None], close_up: list[bool],
                   c: Combination) -> tuple[np.ndarray, list[Regime]]:
    """Combined logits, and which rule scored each photo."""
    out = np.array(whole, dtype=np.float64) / c.temperature + c.shift
    regime: list[Regime] = []
    for i, f in enumerate(face):
        if f is None or len(f) == 0:
            regime.append(Regime.WHOLE)
        elif close_up[i]:
            out[i] = f[0] / c.close_up_temperature
            regime.append(Regime.CLOSE_UP)
        else:
            mixed = c.face_weight * float(np.mean(f)) + (1 - c.face_weight) * whole[i]
            t = c.temperature if c.face_temperature is None else c.face_temperature
            out[i] = mixed / t + c.face_shift
            regime.append(Regime.FACES)
    return out, regime


class _Traced:
    """A tf.function with a fixed signature, called through its one concrete function (traced on
    the first call). Each Pipeline traces its functions once, but every Pipeline's share one
    Python code object, and tf.function's retracing detector counts by code object: a few
    Pipelines built in a row (an evaluation, a retrain's comparison, cross-validation folds)
    made it warn "triggered tf.function retracing" about tracing that is not excessive. A
    concrete function is not counted."""

    def __init__(self, function: Any):
        self._function = function
        self._concrete: Any = None

    def __call__(self, x: np.ndarray) -> Any:
        import tensorflow as tf

        if self._concrete is None:
            self._concrete = self._function.get_concrete_function()
        return self._concrete(tf.convert_to_tensor(x, tf.uint8))


class Pipeline:
    """Loaded models of one version, with compiled forward passes (whole images in fixed
    batches, face crops in one call of any size)."""

    def __init__(self, whole_model: Any, face_model: Any = None, close_up_model: Any = None,
                 combination: Combination | None = None, batch_size: int = 32):
        self.batch_size = batch_size
        self.whole = whole_model
        self.face = face_model
        self.close_up = close_up_model
        self.combination = combination or Combination()
        if face_model is not None:
            check_detector()  # a missing or corrupt detector file fails the load, not every photo

        def compiled(model, shape, batch):
            if isinstance(model, LiteModel):  # a forward pass already, without TensorFlow
                return model
            import tensorflow as tf

            spec = tf.TensorSpec([batch, *shape], tf.uint8)

            @tf.function(input_signature=[spec], autograph=False)
            def forward(x):
                return model(x, training=False)

            return _Traced(forward)

        self._whole_fn = compiled(self.whole, (IMAGE_SIZE, IMAGE_SIZE, 3), batch_size)
        # A batch of photos holds any number of faces (about one a photo): one traced function
        # for every count, where padding each call to the photo batch doubled the face CNN's work.
        face_shape = (FACE_SIZE, FACE_SIZE, 1)
        self._face_fn = compiled(self.face, face_shape, None) if self.face is not None else None
        self._close_fn = (compiled(self.close_up, face_shape, None)
                          if self.close_up is not None else self._face_fn)

    @classmethod
    def load(cls, folder: Path, batch_size: int = 32, runtime: str = "auto",
             precision: str = DYNAMIC_INT8) -> Pipeline:
        """A registry version's pipeline; the face models are there only in versions that use faces.

        runtime "auto": each CNN on LiteRT where the version holds its vouched-for conversion
        (moodwatch.litert.served_lite_file: precision dynamic-int8 takes the int8 one where there
        is one, MOODWATCH_CNN_PRECISION's default), else on Keras; "keras": Keras only (parity
        checks, comparisons)."""
        from moodwatch.modelio import load_model

        if runtime not in ("auto", "keras"):
            raise ValueError(f"unknown runtime {runtime!r} (auto or keras)")
        folder = Path(folder)

        def load_one(name: str) -> Any:
            lite = served_lite_file(folder, name, precision) if runtime == "auto" else None
            if lite is None:
                return load_model(folder / name)
            int8 = lite.name == lite_name(name, DYNAMIC_INT8)
            return LiteModel(lite, quantization=DYNAMIC_INT8 if int8 else FLOAT32)

        def optional(name: str) -> Any:
            return load_one(name) if (folder / name).is_file() else None

        return cls(load_one("model.keras"), optional(FACE_MODEL_FILE),
                   optional(CLOSE_UP_MODEL_FILE), Combination.load(folder), batch_size)

    @property
    def uses_faces(self) -> bool:
        return self.face is not None

    @property
    def runtime(self) -> str:
        """What runs the CNNs: "litert", "keras" or "mixed" (some models have no conversion)."""
        kinds = {isinstance(m, LiteModel) for m in (self.whole, self.face, self.close_up) if m is not None}
        return "mixed" if len(kinds) > 1 else ("litert" if kinds == {True} else "keras")

    @property
    def precision(self) -> str:
        """What each CNN runs in, for the worker's log line: "dynamic-int8", "float32" (LiteRT),
        "keras", or several joined by "+" (a model without that conversion)."""
        kinds = [m.quantization if isinstance(m, LiteModel) else "keras"
                 for m in (self.whole, self.face, self.close_up) if m is not None]
        return "+".join(dict.fromkeys(kinds))

    def _run(self, fn, x: np.ndarray, batch: int | None) -> np.ndarray:
        """Scores of x through fn: in fixed batches padded with zeros, or at once (batch None).
        A LiteRT model takes a short last batch as it is: it runs any batch as calls of a few
        images (LITE_CALL_IMAGES), where padding a job of 5 photos to 32 costs 27 forward passes."""
        if batch is None:
            return np.asarray(fn(x)).reshape(-1).astype(np.float32)
        out = np.empty(len(x), dtype=np.float32)
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            n = len(chunk)
            if n < batch and not isinstance(fn, LiteModel):
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.uint8)])
            out[start : start + n] = np.asarray(fn(chunk)).reshape(-1)[:n]
        return out

    def whole_scores(self, images: np.ndarray) -> np.ndarray:
        return self._run(self._whole_fn, images, self.batch_size)

    def face_scores(self, crops: np.ndarray, close_up: bool = False) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros(0, np.float32)
        return self._run(self._close_fn if close_up else self._face_fn, crops, None)

    def raw(self, prepared: list[Prepared]) -> tuple[np.ndarray, list[np.ndarray | None], list[bool]]:
        """Whole-image logits, per-photo face logits, close-up flags (before combining)."""
        whole = logit(self.whole_scores(np.stack([p.image for p in prepared])))
        if self.face is None:
            return whole, [None] * len(prepared), [False] * len(prepared)
        close = [bool(p.faces is not None and p.faces.close_up) for p in prepared]
        empty = np.zeros((0, FACE_SIZE, FACE_SIZE, 1), np.uint8)
        crops = [p.faces.crops if p.faces is not None else empty for p in prepared]
        found = [c for c, cu in zip(crops, close, strict=True) if not cu and len(c)]
        ups = [c for c, cu in zip(crops, close, strict=True) if cu and len(c)]
        flat = iter(logit(self.face_scores(np.concatenate(found)))) if found else iter(())
        flat_up = iter(logit(self.face_scores(np.concatenate(ups), close_up=True))) if ups else iter(())
        faces = []
        for p, c, cu in zip(prepared, crops, close, strict=True):
            if len(c) == 0:
                faces.append(None)
                continue
            source = flat_up if cu else flat
            logits = np.array([next(source) for _ in range(len(c))])
            if p.faces is not None and p.faces.boxes:
                faces.append(np.array([area_weighted(logits, p.faces.boxes)]))
            else:
                faces.append(logits)
        return whole, faces, close

    def scores(self, prepared: list[Prepared]) -> np.ndarray:
        """Calibrated P(sad) per prepared photo."""
        if not prepared:
            return np.zeros(0, np.float32)
        whole, faces, close = self.raw(prepared)
        z, _ = combine_logits(whole, faces, close, self.combination)
        return sigmoid(z).astype(np.float32)
