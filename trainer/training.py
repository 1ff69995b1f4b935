"""One training run, from curated folders to a registered (and maybe promoted) version."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from moodwatch.modelio import load_model
from moodwatch.registry import Registry, Version, write_json
from moodwatch.settings import Settings
from trainer.architectures import make_model
from trainer.cleaning import CleanReport, clean_folders
from trainer.dataset import DatasetError, Item, fingerprint, load_arrays, make_items, split_items
from trainer.evaluation import evaluate
from trainer.plots import save_history_plots

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    data_dir: Path
    architecture: str = "default"
    epochs: int = 30
    batch_size: int = 16
    patience: int = 6
    learning_rate: float | None = None
    seed: int = 1337
    force_promote: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    version: Version
    metrics: dict[str, Any]
    current_metrics: dict[str, Any] | None
    promoted: bool
    reason: str
    clean: CleanReport
    timings: dict[str, float] = field(default_factory=dict)


class TqdmEpochs(keras.callbacks.Callback):
    """One progress bar over epochs, showing the latest figures."""

    def __init__(self, epochs: int, enabled: bool):
        super().__init__()
        self.bar = tqdm(total=epochs, unit="epoch", desc="training", disable=not enabled)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if "loss" in k or "acc" in k})
        self.bar.update(1)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self.bar.close()


def _dataset(x: np.ndarray, y: np.ndarray, batch: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def promotion_decision(
    new: dict[str, Any], current: dict[str, Any] | None, force: bool
) -> tuple[bool, str]:
    """Promote when no model is current, when forced, or when the new one is at least as good.

    "As good" is judged on the same test files: binary accuracy first, F1 to break ties.
    """
    if force:
        return True, "promotion forced (--promote)"
    if current is None:
        return True, "no current model"
    key_new = (round(new["accuracy"], 6), round(new["f1"], 6))
    key_cur = (round(current["accuracy"], 6), round(current["f1"], 6))
    if key_new >= key_cur:
        return True, (
            f"accuracy {new['accuracy']:.3f} >= current {current['accuracy']:.3f} on the same test files"
        )
    return False, (
        f"not promoted: accuracy {new['accuracy']:.3f} / F1 {new['f1']:.3f} is worse than the "
        f"current model's {current['accuracy']:.3f} / {current['f1']:.3f} on the same test files"
    )


def _files(items: list[Item]) -> list[dict[str, str]]:
    return [{"path": str(i.path), "label": i.label, "sha256": i.sha256} for i in items]


def train(settings: Settings, options: TrainOptions) -> TrainResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data_dir = Path(options.data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data folder {data_dir} does not exist")
    clean = clean_folders(data_dir, settings.quarantine_dir, settings.max_pixels)
    items = make_items(clean.files)
    data_fingerprint = fingerprint(items)
    split = split_items(items, options.seed)
    x_train, y_train = load_arrays(split.train)
    x_val, y_val = load_arrays(split.validation)
    x_test, y_test = load_arrays(split.test)
    timings["load_s"] = time.perf_counter() - t0

    keras.utils.set_random_seed(options.seed)
    model = make_model(options.architecture)
    if options.learning_rate is not None:
        model.optimizer.learning_rate = options.learning_rate
    registry = Registry(settings.model_dir)
    version = registry.new_version_dir(options.architecture)
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=str(version.path / "tensorboard")),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=options.patience, restore_best_weights=True
        ),
        TqdmEpochs(options.epochs, options.progress),
    ]
    t1 = time.perf_counter()
    history = model.fit(
        _dataset(x_train, y_train, options.batch_size, True, options.seed),
        validation_data=_dataset(x_val, y_val, options.batch_size, False, options.seed),
        epochs=options.epochs,
        callbacks=callbacks,
        verbose=0,
    )
    epochs_run = len(history.history.get("loss", []))
    timings["train_s"] = time.perf_counter() - t1
    timings["epoch_s"] = timings["train_s"] / max(1, epochs_run)

    t2 = time.perf_counter()
    metrics = evaluate(model, x_test, y_test)
    current = registry.current()
    current_metrics = None
    if current is not None:
        try:
            current_metrics = evaluate(load_model(current.model_path), x_test, y_test)
            current_metrics["version"] = current.name
        except Exception as exc:  # an unreadable current model must not block a good new one
            log.warning("could not evaluate current model %s: %s", current.name, exc)
    timings["evaluate_s"] = time.perf_counter() - t2
    promoted, reason = promotion_decision(metrics, current_metrics, options.force_promote)

    model.save(version.model_path)
    save_history_plots(history.history, version.path)
    timings["total_s"] = time.perf_counter() - t0
    write_json(
        version.path / "metrics.json",
        {
            "test": metrics,
            "current_on_same_test": current_metrics,
            "promoted": promoted,
            "promotion_reason": reason,
            "epochs_run": epochs_run,
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
            "timings": timings,
        },
    )
    write_json(
        version.path / "params.json",
        {
            "architecture": options.architecture,
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            "patience": options.patience,
            "seed": options.seed,
            "data_dir": str(data_dir.resolve()),
            "data_fingerprint": data_fingerprint,
            "counts": {"train": len(split.train), "validation": len(split.validation),
                       "test": len(split.test)},
            "split": {"train": _files(split.train), "validation": _files(split.validation),
                      "test": _files(split.test)},
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
        },
    )
    if promoted:
        registry.promote(version)
    registry.record_run(
        {
            "version": version.name,
            "outcome": "promoted" if promoted else "trained",
            "reason": reason,
            "data_fingerprint": data_fingerprint,
            "accuracy": metrics["accuracy"],
            "f1": metrics["f1"],
            "seconds": round(timings["total_s"], 1),
        }
    )
    return TrainResult(version, metrics, current_metrics, promoted, reason, clean, timings)
