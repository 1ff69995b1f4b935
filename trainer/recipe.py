"""The training recipe: its options, and the fit of a version's models on prepared photos."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from moodwatch.modelio import load_model
from moodwatch.pipeline import CLOSE_UP_MODEL_FILE, Combination, Pipeline, Prepared
from moodwatch.registry import Version
from moodwatch.settings import Settings
from trainer.architectures import DEFAULT_ARCHITECTURE, make_model
from trainer.calibration import calibrate

log = logging.getLogger(__name__)

RECIPE_PATIENCE = 12  # epochs without a better validation loss before training stops
FINE_TUNE_LR = 1e-4  # a tenth of training from scratch: adapt the current weights, do not undo them


@dataclass
class TrainOptions:
    """Every parameter of a training run: `train` reads them here and nowhere else (its settings
    say only where things are, and the decode limit every photo is held to). Build them with
    `recipe`, which fills epochs, seed and the curated minimum from the settings; the defaults
    below are the recipe's fixed parts."""

    data_dir: Path
    epochs: int
    architecture: str = DEFAULT_ARCHITECTURE
    batch_size: int = 16
    patience: int = RECIPE_PATIENCE
    learning_rate: float | None = None
    seed: int = 1337  # MOODWATCH_SEED's default; recipe() gives the setting
    force_promote: bool = False
    progress: bool = True
    face_base: Path | None = None  # a face model to fine-tune; default: the current version's
    no_faces: bool = False
    face_epochs: int = 3
    face_weight: float = 0.5
    face_head_only: bool = False
    # Stop before training when the cleaned data has this fingerprint (the nightly job's skip).
    skip_if_fingerprint: str | None = None
    # Fewer curated photos of a class than this: train if asked, never promote.
    min_per_class: int = 0
    # "current": the whole-image CNN starts from the current version's weights and fine-tunes at
    # FINE_TUNE_LR; "scratch": from random weights (README, nightly retraining: measured).
    start: str = "current"


def recipe(settings: Settings, data_dir: Path, **changes: Any) -> TrainOptions:
    """The one training recipe: what the nightly retrain runs on the curated folders, and what the
    shipped version was trained with (`moodwatch train --data DIR`). Flags change single fields;
    this is the one place settings become training parameters."""
    options = TrainOptions(data_dir=Path(data_dir), epochs=settings.retrain_epochs, seed=settings.seed,
                           min_per_class=settings.retrain_min_per_class)
    return replace(options, **{k: v for k, v in changes.items() if v is not None})


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


def fine_tune_faces(face_model: keras.Model, prepared: list[Prepared], y: np.ndarray, epochs: int,
                    seed: int, head_only: bool = False) -> int:
    """Adapt the face model to the faces in the curated photos; returns how many crops it saw.

    head_only trains the dense layers alone: the convolutions (and batch statistics) learned from
    thousands of face crops stay as they are.
    """
    if head_only:
        for layer in face_model.layers:
            layer.trainable = isinstance(layer, keras.layers.Dense)
    crops, labels = [], []
    for p, label in zip(prepared, y, strict=True):
        if p.faces is not None and len(p.faces.crops):
            crops.append(p.faces.crops)
            labels += [label] * len(p.faces.crops)
    if len(labels) < 8 or epochs <= 0:
        return 0
    face_model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy",
                       metrics=["accuracy"])
    face_model.fit(np.concatenate(crops), np.array(labels, np.float32), batch_size=16, epochs=epochs,
                   shuffle=True, verbose=0)
    return len(labels)


def close_up_model_for(face_base: Path | None) -> Path | None:
    """The never-fine-tuned face model that goes with face_base: carried from version to version."""
    if face_base is None:
        return None
    carried = face_base.parent / CLOSE_UP_MODEL_FILE
    return carried if carried.is_file() else face_base


def whole_start(options: TrainOptions, current: Version | None) -> Path | None:
    """The whole-image CNN to fine-tune: the current version's, when the recipe starts from it
    and it has the same architecture (weights of another shape cannot be carried over)."""
    if options.start != "current" or current is None:
        return None
    if current.params().get("architecture") != options.architecture:
        log.info("current version %s is not %s: training from scratch", current.name, options.architecture)
        return None
    return current.model_path


def fit_models(
    options: TrainOptions, train_prep: list[Prepared], y_train: np.ndarray, val_prep: list[Prepared],
    y_val: np.ndarray, face_base: Path | None, log_dir: Path | None = None,
    close_up_base: Path | None = None, init_whole: Path | None = None,
) -> tuple[Pipeline, dict[str, list[float]]]:
    """Train the whole-image CNN (from init_whole's weights when given), fine-tune the face
    model, calibrate: a ready pipeline."""
    keras.utils.set_random_seed(options.seed)
    model = make_model(options.architecture)
    if init_whole is not None:
        model.set_weights(load_model(init_whole).get_weights())
        model.optimizer.learning_rate = FINE_TUNE_LR
    if options.learning_rate is not None:
        model.optimizer.learning_rate = options.learning_rate
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=options.patience,
                                      restore_best_weights=True),
        TqdmEpochs(options.epochs, options.progress),
    ]
    if log_dir is not None:
        callbacks.insert(0, keras.callbacks.TensorBoard(log_dir=str(log_dir)))
    x_train = np.stack([p.image for p in train_prep])
    x_val = np.stack([p.image for p in val_prep])
    history = model.fit(
        _dataset(x_train, y_train, options.batch_size, True, options.seed),
        validation_data=_dataset(x_val, y_val, options.batch_size, False, options.seed),
        epochs=options.epochs, callbacks=callbacks, verbose=0,
        shuffle=False,  # the dataset shuffles itself (each epoch); fit's own flag is ignored for one
    )
    return with_faces(options, model, train_prep, y_train, val_prep, y_val, face_base,
                      close_up_base), history.history


def with_faces(options: TrainOptions, whole: keras.Model, train_prep: list[Prepared], y_train: np.ndarray,
               val_prep: list[Prepared], y_val: np.ndarray, face_base: Path | None,
               close_up_base: Path | None = None) -> Pipeline:
    """A trained whole-image CNN made a calibrated pipeline: face_base's model fine-tuned on the
    training photos' faces beside it (none: the whole image alone). Cross-validation calls it
    again on the same whole CNN to pair face models fold by fold."""
    face_model = None
    if face_base is not None:
        # Seeded here too: face models paired on one whole CNN see their crops in the same order.
        keras.utils.set_random_seed(options.seed)
        face_model = load_model(face_base)
        fine_tune_faces(face_model, train_prep, y_train, options.face_epochs, options.seed,
                        head_only=options.face_head_only)
    close_up = load_model(close_up_base) if close_up_base is not None and face_model is not None else None
    pipeline = Pipeline(whole, face_model, close_up, Combination(face_weight=options.face_weight))
    pipeline.combination = calibrate(pipeline, val_prep, y_val)
    return pipeline
