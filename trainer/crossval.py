"""K-fold cross-validation of architectures on one labelled folder (for comparing variants)."""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np

from moodwatch.pipeline import (
    CLOSE_UP_MODEL_FILE,
    FACE_MODEL_FILE,
    Pipeline,
    Prepared,
    combine_logits,
    sigmoid,
)
from moodwatch.registry import MODEL_FILE
from moodwatch.settings import Settings
from moodwatch.vocab import DEFAULT_MAX_PIXELS, LABELS
from trainer.cleaning import unusable_reason
from trainer.dataset import Item, labels_of, make_items, prepare_items, shuffled_groups, split_items
from trainer.dedupe import near_duplicate_key
from trainer.evaluation import black_and_white, metrics_from_scores
from trainer.recipe import TrainOptions, fit_models, recipe, with_faces
from trainer.report import roc_auc


@dataclass
class FoldResult:
    fold: int
    metrics: dict[str, Any]
    epochs: int
    epoch_s: float


def folds_of(items: list[Item], k: int, seed: int,
             group_of: Callable[[Item], str] | None = None) -> list[list[Item]]:
    """Stratified folds; files with the same bytes (or the same group_of key: near-twins, see
    trainer.dedupe.near_duplicate_key) stay in one fold."""
    rng = random.Random(seed)
    folds: list[list[Item]] = [[] for _ in range(k)]
    for label in LABELS:
        for i, group in enumerate(shuffled_groups(items, label, rng, group_of)):
            folds[i % k].extend(group)
    return folds


def list_items(data_dir: Path | list[Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Item]:
    """The usable photos of one labelled folder, or of several pooled (each keeps its path, so
    figures can be given per folder)."""
    dirs = [data_dir] if isinstance(data_dir, Path) else data_dir
    files = [
        (p, label)
        for folder in dirs
        for label in LABELS
        for p in sorted((Path(folder) / label).rglob("*"))
        if p.is_file() and unusable_reason(p, max_pixels) is None
    ]
    return make_items(files)


def source_of(item: Item) -> str:
    """The labelled folder a photo came from (the folder above its label folder)."""
    return next(p.name for p in item.path.parents if p.parent.name != item.label and p.name != item.label)


def grey(prepared: Prepared) -> Prepared:
    """The same photo in black and white (three equal channels), its face crops unchanged."""
    g = cv2.cvtColor(prepared.image, cv2.COLOR_RGB2GRAY)
    return replace(prepared, image=np.repeat(g[..., None], 3, axis=-1))


def fer_accuracy(pipeline: Pipeline, crops: tuple[np.ndarray, np.ndarray] | None) -> float | None:
    """The fold's fine-tuned face CNN on close-ups it never saw (FER-2013 validation crops)."""
    if crops is None or pipeline.face is None:
        return None
    x, y = crops
    return float(np.mean((pipeline.face_scores(x) >= 0.5) == (y == 1)))


def cross_validate(
    data_dir: Path | list[Path], architecture: str, k: int = 5, epochs: int | None = None,
    patience: int | None = None,
    batch_size: int = 16, seed: int = 1337, face_base: Path | None = None, face_epochs: int = 3,
    face_weight: float = 0.5, max_pixels: int = DEFAULT_MAX_PIXELS, face_head_only: bool = False,
    near_duplicates: bool = False, fer_crops: tuple[np.ndarray, np.ndarray] | None = None,
    on_fold: Callable[[FoldResult], None] | None = None, conversions: tuple[str, ...] = (),
    face_alternatives: tuple[Path, ...] = (),
) -> list[FoldResult]:
    """Each fold is the test set once; the rest is split 80/20 into training and validation
    (early stopping and calibration), exactly as `moodwatch train` does with its own split, and
    trained by the same recipe (epochs and patience as the nightly retrain's unless given).
    conversions: LiteRT quantizations (trainer.convert.QUANTIZATIONS) of each fold's models,
    scoring the same test photos (metrics["converted"]), so that a conversion is judged out of fold.
    face_alternatives: other face models, each fine-tuned and calibrated beside the fold's own
    whole-image CNN in place of face_base's and scored on the same test photos
    (metrics["alternatives"][str(path)]): face models compared fold by fold, the whole CNN trained
    once for all of them."""
    items = list_items(data_dir, max_pixels)
    group_of = near_duplicate_key(items, max_pixels) if near_duplicates else None
    folds = folds_of(items, k, seed, group_of)
    prepared = dict(zip([str(i.path) for i in items],
                        prepare_items(items, max_pixels, faces=face_base is not None), strict=True))
    first = data_dir if isinstance(data_dir, Path) else data_dir[0]
    options = recipe(Settings(), first, architecture=architecture, epochs=epochs, patience=patience,
                     batch_size=batch_size, seed=seed, progress=False, face_epochs=face_epochs,
                     face_weight=face_weight, face_head_only=face_head_only)
    results = []
    for i in range(k):
        test = folds[i]
        rest = [it for j, f in enumerate(folds) if j != i for it in f]
        inner = split_items(rest, seed, fractions=(0.8, 0.2, 0.0001), group_of=group_of)
        train_items = inner.train + inner.test  # the inner split's token test group trains too
        t0 = time.perf_counter()
        val_prep = [prepared[str(it.path)] for it in inner.validation]
        pipeline, history = fit_models(
            options, [prepared[str(it.path)] for it in train_items], labels_of(train_items),
            val_prep, labels_of(inner.validation), face_base, close_up_base=face_base)
        n_epochs = len(history["loss"])
        test_prep = [prepared[str(it.path)] for it in test]
        # One forward pass gives the scores (as Pipeline.scores), the regimes and the raw logits.
        test_rows, z, regimes = scored_rows(pipeline, test_prep, labels_of(test))
        scores = sigmoid(z).astype(np.float32)
        metrics = metrics_from_scores(labels_of(test), scores)
        metrics["roc_auc"] = roc_auc(labels_of(test).astype(int), scores)
        metrics["scores"] = [float(s) for s in scores]
        metrics["truth"] = [int(v) for v in labels_of(test)]
        metrics["regimes"] = regimes
        metrics["paths"] = [str(it.path) for it in test]
        metrics["sources"] = [source_of(it) for it in test]
        metrics["black_and_white"] = [black_and_white(p.image) for p in test_prep]
        # The same models reading every photo in grey (face crops are grey already).
        metrics["grey_raw"] = {
            "validation": scored_rows(pipeline, [grey(p) for p in val_prep], labels_of(inner.validation))[0],
            "test": scored_rows(pipeline, [grey(p) for p in test_prep], labels_of(test))[0]}
        metrics["fer_accuracy"] = fer_accuracy(pipeline, fer_crops)
        train_prep = [prepared[str(it.path)] for it in train_items]
        metrics["converted"] = {q: converted_scores(pipeline, q, train_prep, test_prep) for q in conversions}
        splits = ((train_prep, labels_of(train_items)), (val_prep, labels_of(inner.validation)),
                  (test_prep, labels_of(test)))
        metrics["alternatives"] = {str(alt): alternative_scores(options, pipeline, alt, *splits, conversions)
                                   for alt in face_alternatives}
        # What calibration sees and what it is applied to, to compare calibration rules offline
        # on the same trained models (benchmarks/calibration_rules.py).
        metrics["raw"] = {"validation": scored_rows(pipeline, val_prep, labels_of(inner.validation))[0],
                          "test": test_rows}
        results.append(FoldResult(i, metrics, n_epochs, (time.perf_counter() - t0) / n_epochs))
        if on_fold is not None:
            on_fold(results[-1])
        keras.backend.clear_session()
    return results


Labelled = tuple[list[Prepared], np.ndarray]  # prepared photos and their labels


def alternative_scores(options: TrainOptions, pipeline: Pipeline, face_base: Path, train: Labelled,
                       validation: Labelled, test: Labelled, conversions: tuple[str, ...]) -> dict[str, Any]:
    """Another face model (its close-up copy too) beside the fold's whole-image CNN, by the same
    fine-tuning and calibration: its test scores and accuracy, in Keras and each conversion."""
    alt = with_faces(options, pipeline.whole, *train, *validation, face_base, close_up_base=face_base)
    scores = alt.scores(test[0])
    out: dict[str, Any] = {"accuracy": metrics_from_scores(test[1], scores)["accuracy"],
                           "scores": [float(s) for s in scores], "converted": {}}
    for q in conversions:
        converted = converted_scores(alt, q, train[0], test[0])
        out["converted"][q] = {"accuracy": metrics_from_scores(test[1], np.array(converted))["accuracy"],
                               "scores": converted}
    return out


def converted_scores(pipeline: Pipeline, quantization: str, train_prep: list[Prepared],
                     test_prep: list[Prepared], representative: int = 256) -> list[float]:
    """The test photos' calibrated P(sad) from the fold's CNNs converted to LiteRT as the worker
    would serve them (same combination and calibration); int8 measures its activation ranges on
    training photos and their face crops."""
    from moodwatch.litert import LiteModel
    from trainer.convert import INPUT_SHAPES, to_tflite

    rng = np.random.default_rng(0)
    pick = rng.permutation(len(train_prep))[:representative]
    images = np.stack([train_prep[i].image for i in pick])
    crops = [c for i in pick if train_prep[i].faces is not None for c in train_prep[i].faces.crops]
    face_rep = np.stack(crops) if crops else None
    with tempfile.TemporaryDirectory() as tmp:
        lite = {}
        for name, model, rep in ((MODEL_FILE, pipeline.whole, images),
                                 (FACE_MODEL_FILE, pipeline.face, face_rep),
                                 (CLOSE_UP_MODEL_FILE, pipeline.close_up, face_rep)):
            if model is not None:
                path = Path(tmp) / f"{name}.tflite"
                path.write_bytes(to_tflite(model, INPUT_SHAPES[name], quantization, rep))
                lite[name] = LiteModel(path, quantization=quantization)
        served = Pipeline(lite[MODEL_FILE], lite.get(FACE_MODEL_FILE), lite.get(CLOSE_UP_MODEL_FILE),
                          pipeline.combination, pipeline.batch_size)
        return [float(s) for s in served.scores(test_prep)]


def scored_rows(pipeline: Pipeline, prepared: list[Prepared],
                y: np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray, list[str]]:
    """Per photo: the whole-image logit, the faces' combined logit (None without one), the regime
    and the truth; with the calibrated combined logits and the regimes."""
    whole, faces, close = pipeline.raw(prepared)
    z, regimes = combine_logits(whole, faces, close, pipeline.combination)
    rows = [{"whole": float(w), "face": None if f is None or len(f) == 0 else float(np.mean(f)),
             "regime": r, "truth": int(t)} for w, f, r, t in zip(whole, faces, regimes, y, strict=True)]
    return rows, z, regimes


def summarise(results: list[FoldResult]) -> dict[str, float]:
    out = {}
    for key in ("accuracy", "f1", "precision", "recall", "roc_auc"):
        vals = [r.metrics[key] for r in results]
        out[f"{key}_mean"] = statistics.mean(vals)
        out[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    out["epoch_s"] = statistics.mean(r.epoch_s for r in results)
    return out
