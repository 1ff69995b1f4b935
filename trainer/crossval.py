"""K-fold cross-validation of architectures on one labelled folder (for comparing variants)."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from moodwatch.settings import LABELS
from trainer.architectures import make_model
from trainer.cleaning import check_file
from trainer.dataset import Item, load_arrays, make_items, shuffled_groups, split_items
from trainer.evaluation import evaluate


@dataclass
class FoldResult:
    fold: int
    metrics: dict[str, Any]
    epochs: int
    epoch_s: float


def folds_of(items: list[Item], k: int, seed: int) -> list[list[Item]]:
    """Stratified folds; files with the same bytes stay in one fold."""
    rng = random.Random(seed)
    folds: list[list[Item]] = [[] for _ in range(k)]
    for label in LABELS:
        for i, group in enumerate(shuffled_groups(items, label, rng)):
            folds[i % k].extend(group)
    return folds


def list_items(data_dir: Path, max_pixels: int = 50_000_000) -> list[Item]:
    files = [
        (p, label)
        for label in LABELS
        for p in sorted((data_dir / label).rglob("*"))
        if p.is_file() and check_file(p, max_pixels) is None
    ]
    return make_items(files)


def cross_validate(
    data_dir: Path, architecture: str, k: int = 5, epochs: int = 40, patience: int = 8,
    batch_size: int = 16, seed: int = 1337,
) -> list[FoldResult]:
    items = list_items(data_dir)
    folds = folds_of(items, k, seed)
    results = []
    for i in range(k):
        test = folds[i]
        rest = [it for j, f in enumerate(folds) if j != i for it in f]
        inner = split_items(rest, seed, fractions=(0.8, 0.2, 0.0001))
        train_items = inner.train + inner.test  # the inner split's token test group trains too
        x_tr, y_tr = load_arrays(train_items)
        x_va, y_va = load_arrays(inner.validation)
        x_te, y_te = load_arrays(test)
        keras.utils.set_random_seed(seed + i)
        model = make_model(architecture)
        train_ds = (tf.data.Dataset.from_tensor_slices((x_tr, y_tr)).shuffle(len(x_tr), seed=seed)
                    .batch(batch_size).prefetch(tf.data.AUTOTUNE))
        val_ds = tf.data.Dataset.from_tensor_slices((x_va, y_va)).batch(batch_size)
        t0 = time.perf_counter()
        hist = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                          restore_best_weights=True)])
        n_epochs = len(hist.history["loss"])
        results.append(FoldResult(i, evaluate(model, x_te, y_te), n_epochs,
                                  (time.perf_counter() - t0) / n_epochs))
        del model
        keras.backend.clear_session()
        np.random.seed(None)
    return results


def summarise(results: list[FoldResult]) -> dict[str, float]:
    out = {}
    for key in ("accuracy", "f1", "precision", "recall"):
        vals = [r.metrics[key] for r in results]
        out[f"{key}_mean"] = statistics.mean(vals)
        out[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    out["epoch_s"] = statistics.mean(r.epoch_s for r in results)
    return out
