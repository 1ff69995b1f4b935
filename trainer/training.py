"""One training run, from curated folders to a registered (and maybe promoted) version."""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from moodwatch.modelio import load_model
from moodwatch.pipeline import (
    CLOSE_UP_MODEL_FILE,
    FACE_MODEL_FILE,
    PIPELINE_FILE,
    Combination,
    Pipeline,
    Prepared,
    combine_logits,
    fit_temperature,
    prepare_path,
)
from moodwatch.publication import publish_promotion
from moodwatch.registry import Registry, RegistryError, Version, write_json
from moodwatch.settings import Settings
from moodwatch.vocab import LABELS, Regime
from trainer.architectures import DEFAULT_ARCHITECTURE, make_model
from trainer.cleaning import CleanReport, clean_folders
from trainer.convert import convert_version
from trainer.dataset import DatasetError, Item, Split, fingerprint, make_items, split_items, stable_split
from trainer.dedupe import near_duplicate_key
from trainer.evaluation import metrics_from_scores
from trainer.plots import save_history_plots
from trainer.promotion import Decision, decide

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    data_dir: Path
    architecture: str = DEFAULT_ARCHITECTURE
    epochs: int = 30
    batch_size: int = 16
    patience: int = 6
    learning_rate: float | None = None
    seed: int = 1337
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


RECIPE_PATIENCE = 12  # epochs without a better validation loss before training stops
FINE_TUNE_LR = 1e-4  # a tenth of training from scratch: adapt the current weights, do not undo them


def recipe(settings: Settings, data_dir: Path, **changes: Any) -> TrainOptions:
    """The one training recipe: what the nightly retrain runs on the curated folders, and what the
    shipped version was trained with (`moodwatch train --data DIR`). Flags change single fields."""
    options = TrainOptions(data_dir=Path(data_dir), epochs=settings.retrain_epochs,
                           patience=RECIPE_PATIENCE, seed=settings.seed,
                           min_per_class=settings.retrain_min_per_class)
    return replace(options, **{k: v for k, v in changes.items() if v is not None})


class DataUnchanged(Exception):
    """The curated data is the same as last time: nothing to learn."""

    def __init__(self, data_fingerprint: str):
        super().__init__("curated data unchanged since the last version")
        self.data_fingerprint = data_fingerprint


@dataclass
class TrainResult:
    version: Version
    metrics: dict[str, Any]
    current_metrics: dict[str, Any] | None
    decision: Decision
    clean: CleanReport
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision.promoted

    @property
    def reason(self) -> str:
        return self.decision.reason


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


def _files(items: list[Item]) -> list[dict[str, str]]:
    return [{"path": str(i.path), "label": i.label, "sha256": i.sha256} for i in items]


def prepare_items(items: list[Item], max_pixels: int, faces: bool, workers: int = 2) -> list[Prepared]:
    """The shared preprocessing (whole image, and face crops when the pipeline uses faces)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda it: prepare_path(it.path, max_pixels, faces), items))


def labels_of(items: list[Item]) -> np.ndarray:
    return np.array([it.y for it in items], dtype=np.float32)


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


# A regime with fewer validation photos than this borrows its temperature (see fit_combination).
MIN_PER_REGIME = 5
# A temperature fitted on 40 validation photos swung from 0.25 to 0.78 between cross-validation
# folds: log T's prior, N(0, 0.5^2), keeps such a fit near the logits as they are unless the
# photos say otherwise (README, the model's figures: calibration rules compared).
TEMPERATURE_PRIOR_SD = 0.5


def calibrate(pipeline: Pipeline, prepared: list[Prepared], y: np.ndarray) -> Combination:
    """Fit a temperature per regime on the validation split, so confidence means what it says."""
    whole, faces, close = pipeline.raw(prepared)
    return fit_combination(whole, faces, close, y, pipeline.combination.face_weight)


def fit_combination(whole: np.ndarray, faces: list[np.ndarray | None], close: list[bool], y: np.ndarray,
                    face_weight: float, prior_sd: float | None = TEMPERATURE_PRIOR_SD,
                    min_per_regime: int = MIN_PER_REGIME) -> Combination:
    """The temperatures for held-back photos' raw logits (see Pipeline.raw).

    Photos with faces and photos read as a whole differ in how often they are right, so each
    regime gets its own temperature, fitted on its own photos. A regime with too few of them
    borrows: faces the temperature of every photo's combined logit, photos read whole that of
    every photo's whole-image logit (they are scored by the whole-image CNN alone); close-ups
    are left out of both. Close-ups keep the face model's own calibration (fitted on its 12,000
    crops).
    """
    base = Combination(face_weight=face_weight, temperature=1.0)
    z, regimes = combine_logits(whole, faces, close, base)
    regime = np.array(regimes)
    pooled = regime != Regime.CLOSE_UP

    def fit(logits: np.ndarray, mask: np.ndarray) -> float:
        return fit_temperature(logits[mask], y[mask], prior_sd) if mask.any() else 1.0

    is_faces, is_whole = regime == Regime.FACES, regime == Regime.WHOLE
    if any(f is not None for f in faces):  # a pipeline with a face model
        base.face_temperature = fit(z, is_faces if is_faces.sum() >= min_per_regime else pooled)
    base.temperature = (fit(z, is_whole) if is_whole.sum() >= min_per_regime
                        else fit(np.asarray(whole, dtype=np.float64), pooled))
    base.regimes = {r: regimes.count(r) for r in set(regimes)}
    return base


def close_up_model_for(face_base: Path | None) -> Path | None:
    """The never-fine-tuned face model that goes with face_base: carried from version to version."""
    if face_base is None:
        return None
    carried = face_base.parent / CLOSE_UP_MODEL_FILE
    return carried if carried.is_file() else face_base


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
    face_model = None
    if face_base is not None:
        face_model = load_model(face_base)
        fine_tune_faces(face_model, train_prep, y_train, options.face_epochs, options.seed,
                        head_only=options.face_head_only)
    close_up = load_model(close_up_base) if close_up_base is not None and face_model is not None else None
    pipeline = Pipeline(model, face_model, close_up, Combination(face_weight=options.face_weight))
    pipeline.combination = calibrate(pipeline, val_prep, y_val)
    return pipeline, history.history


def save_lean(model: keras.Model, path: Path) -> None:
    """Save the weights and architecture without the optimizer's state: a third of the size."""
    lean = keras.Model.from_config(model.get_config())
    lean.set_weights(model.get_weights())
    lean.save(path)


def current_or_none(registry: Registry) -> Version | None:
    """The current version; a pointer to a missing version is reported, not fatal to training."""
    try:
        return registry.current()
    except RegistryError as exc:
        log.warning("%s: training as if there were no current model", exc)
        return None


def default_face_base(registry: Registry) -> Path | None:
    """The face model a new version starts from: the current version's as it came from the large
    face set (never fine-tuned), so nightly runs do not fine-tune a fine-tuned model again."""
    current = current_or_none(registry)
    if current is None:
        return None
    for name in (CLOSE_UP_MODEL_FILE, FACE_MODEL_FILE):
        if (current.path / name).is_file():
            return current.path / name
    return None


@dataclass
class PreparedData:
    """The curated data, cleaned, split and prepared once for training and evaluation."""

    clean: CleanReport
    split: Split
    data_fingerprint: str
    train: list[Prepared]
    validation: list[Prepared]
    test: list[Prepared]


def _load(settings: Settings, options: TrainOptions, faces: bool, current: Version | None) -> PreparedData:
    data_dir = Path(options.data_dir)
    clean = clean_folders(data_dir, settings.quarantine_dir, settings.max_pixels)
    items = make_items(clean.files)
    data_fingerprint = fingerprint(items)
    if data_fingerprint == options.skip_if_fingerprint:
        raise DataUnchanged(data_fingerprint)
    # Each photo's side comes from its bytes, so it keeps it across retrains; near-twins of a
    # test photo stay out of training, and photos the current version learned from are never
    # test photos (trainer.dataset.stable_split).
    group_of = near_duplicate_key(items, settings.max_pixels)
    try:
        split = stable_split(items, group_of, seen=seen_by(current))
    except DatasetError as exc:
        # A handful of photos, mostly near-twins: no stable side for every class. The seeded
        # split still keeps twins together; such a run is below any sane promotion minimum.
        log.warning("%s: using a seeded split of these few photos instead of the stable one", exc)
        split = split_items(items, options.seed, group_of=group_of)
    return PreparedData(clean, split, data_fingerprint,
                     prepare_items(split.train, settings.max_pixels, faces),
                     prepare_items(split.validation, settings.max_pixels, faces),
                     prepare_items(split.test, settings.max_pixels, faces))


def seen_by(version: Version | None) -> frozenset[str]:
    """The sha256 of every photo a version was trained or validated on (its params.json)."""
    if version is None:
        return frozenset()
    split = version.params().get("split", {})
    return frozenset(f["sha256"] for side in ("train", "validation") for f in split.get(side, []))


def class_counts(files: list[tuple[Path, str]]) -> dict[str, int]:
    """Usable curated photos per label (after cleaning, twins included)."""
    return {label: sum(1 for _, lab in files if lab == label) for label in LABELS}


def below_minimum(counts: dict[str, int], minimum: int) -> str | None:
    """Why there are too few curated photos to promote, or None."""
    short = {label: n for label, n in counts.items() if n < minimum}
    if not short:
        return None
    said = ", ".join(f"{n} {label}" for label, n in counts.items())
    return f"too few curated photos to judge a new version: {said}; the minimum is {minimum} per class " \
           "(MOODWATCH_RETRAIN_MIN_PER_CLASS)"


def _score_current(current: Version | None, test_prep: list[Prepared]) -> np.ndarray | None:
    """The current version's scores on the same test photos; None when there is none (or it
    cannot be read: an unreadable current model must not block a good new one)."""
    if current is None:
        return None
    try:
        return Pipeline.load(current.path).scores(test_prep)
    except Exception as exc:
        log.warning("could not evaluate current model %s: %s", current.name, exc)
        return None


def _params(options: TrainOptions, face_base: Path | None, data: PreparedData) -> dict[str, Any]:
    split = data.split
    return {
        "architecture": options.architecture,
        "faces": face_base is not None,
        "face_base": str(face_base) if face_base else None,
        "face_base_provenance": _provenance(face_base),
        "face_epochs": options.face_epochs if face_base else 0,
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "patience": options.patience,
        "seed": options.seed,
        "data_dir": str(Path(options.data_dir).resolve()),
        "data_fingerprint": data.data_fingerprint,
        "counts": {"train": len(split.train), "validation": len(split.validation),
                   "test": len(split.test)},
        "split": {"train": _files(split.train), "validation": _files(split.validation),
                  "test": _files(split.test)},
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }


def _save_pipeline(pipeline: Any, history: dict[str, Any], version: Version,
                   close_up_base: Path | None) -> None:
    save_lean(pipeline.whole, version.model_path)
    if pipeline.face is not None:
        save_lean(pipeline.face, version.path / FACE_MODEL_FILE)
        if close_up_base is not None:
            shutil.copyfile(close_up_base, version.path / CLOSE_UP_MODEL_FILE)
    write_json(version.path / PIPELINE_FILE, pipeline.combination.to_json())
    convert_version(version.path, strict=False)  # LiteRT copies to serve; Keras where one fails
    save_history_plots(history, version.path)


def whole_start(options: TrainOptions, current: Version | None) -> Path | None:
    """The whole-image CNN to fine-tune: the current version's, when the recipe starts from it
    and it has the same architecture (weights of another shape cannot be carried over)."""
    if options.start != "current" or current is None:
        return None
    if current.params().get("architecture") != options.architecture:
        log.info("current version %s is not %s: training from scratch", current.name, options.architecture)
        return None
    return current.model_path


def train(settings: Settings, options: TrainOptions) -> TrainResult:
    """Clean, split, fit, evaluate against the current model, write a version, maybe promote.

    The version folder holds a whole version or does not exist: if anything fails before the
    version is complete, the folder is removed (it was made by this run) and the error raised.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if not Path(options.data_dir).is_dir():
        raise DatasetError(f"data folder {options.data_dir} does not exist")
    registry = Registry.for_settings(settings, migrate=True)  # an older release's local versions
    face_base = None if options.no_faces else (options.face_base or default_face_base(registry))
    current = current_or_none(registry)
    # Face crops are prepared when either the new or the current pipeline uses them.
    faces = face_base is not None or (current is not None and (current.path / FACE_MODEL_FILE).is_file())
    data = _load(settings, options, faces, current)
    split = data.split
    y_train, y_val, y_test = labels_of(split.train), labels_of(split.validation), labels_of(split.test)
    timings["load_s"] = time.perf_counter() - t0
    shortfall = below_minimum(class_counts(data.clean.files), options.min_per_class)
    init_whole = whole_start(options, current)
    say(options, f"curated photos: {len(split.train)} train, {len(split.validation)} validation, "
                 f"{len(split.test)} test (stable split by content hash); starting from "
                 + (f"{current.name}'s weights" if init_whole else "scratch"))
    if shortfall:
        say(options, shortfall + ": training, but this version will not be promoted")

    version = registry.new_version_dir(options.architecture + ("-faces" if face_base else ""))
    try:
        t1 = time.perf_counter()
        close_up_base = close_up_model_for(face_base)
        pipeline, history = fit_models(options, data.train, y_train, data.validation, y_val, face_base,
                                       log_dir=version.path / "tensorboard", close_up_base=close_up_base,
                                       init_whole=init_whole)
        epochs_run = len(history.get("loss", []))
        timings["train_s"] = time.perf_counter() - t1
        timings["epoch_s"] = timings["train_s"] / max(1, epochs_run)

        t2 = time.perf_counter()
        metrics, current_metrics, decision = _judge(pipeline, current, data.test, y_test, shortfall,
                                                    options.force_promote)
        timings["evaluate_s"] = time.perf_counter() - t2
        _save_pipeline(pipeline, history, version, close_up_base)
        timings["total_s"] = time.perf_counter() - t0
        write_json(version.path / "metrics.json", {
            "test": metrics, "current_on_same_test": current_metrics, "promoted": decision.promoted,
            "promotion_reason": decision.reason, "decision": decision.to_json(), "epochs_run": epochs_run,
            "started_from": current.name if init_whole else "scratch",
            "history": {k: [float(v) for v in vals] for k, vals in history.items()}, "timings": timings,
        })
        write_json(version.path / "params.json", _params(options, face_base, data))
    except BaseException:
        shutil.rmtree(version.path, ignore_errors=True)  # this run's own, unfinished folder
        raise
    _register(settings, registry, version, options.architecture + ("+faces" if face_base else ""),
              metrics, decision, data.data_fingerprint, timings["total_s"])
    return TrainResult(version, metrics, current_metrics, decision, data.clean, timings)


def _judge(pipeline: Pipeline, current: Version | None, test: list[Prepared], y_test: np.ndarray,
           shortfall: str | None, force: bool) -> tuple[dict[str, Any], dict[str, Any] | None, Decision]:
    """The candidate's and the current version's figures on the same test photos, and the
    promotion decision (trainer.promotion)."""
    scores = pipeline.scores(test)
    metrics = metrics_from_scores(y_test, scores)
    current_scores = _score_current(current, test)
    decision = decide(y_test, scores, current_scores, enough_data=shortfall is None,
                      minimum_note=shortfall or "", force=force)
    metrics["ece"] = decision.candidate.ece
    current_metrics = None
    if current_scores is not None and decision.current is not None:
        current_metrics = {**metrics_from_scores(y_test, current_scores), "version": current.name,
                           "ece": decision.current.ece}
    return metrics, current_metrics, decision


def _register(settings: Settings, registry: Registry, version: Version, architecture: str,
              metrics: dict[str, Any], decision: Decision, data_fingerprint: str, seconds: float) -> None:
    """Promote by the decision, and record the run: registry, run log, database."""
    if decision.promoted:
        registry.promote(version)
        publish_promotion(settings, version)  # workers on other machines follow (moodwatch.publication)
    _record_in_database(settings, version.name, architecture, metrics, decision)
    registry.record_run({
        "version": version.name, "outcome": "promoted" if decision.promoted else "trained",
        "reason": decision.reason, "data_fingerprint": data_fingerprint,
        "accuracy": metrics["accuracy"], "f1": metrics["f1"], "ece": decision.candidate.ece,
        "test_n": decision.test_n, "decision": decision.to_json(), "seconds": round(seconds, 1),
    })


def say(options: TrainOptions, line: str) -> None:
    """A line for the person watching a training run (above its progress bar), and the log."""
    log.info(line)
    if options.progress:
        tqdm.write(line)


def _record_in_database(
    settings: Settings, name: str, architecture: str, metrics: dict, decision: Decision
) -> None:
    """Best effort: the registry is the source of truth, the table a convenience for SQL."""
    try:
        from db.engine import make_engine, make_sessionmaker
        from db.migrate import upgrade
        from db.repository import upsert_model_version

        upgrade(settings.database)
        engine = make_engine(settings.database)
        with make_sessionmaker(engine)() as session, session.begin():
            upsert_model_version(session, name, architecture, {**metrics, "decision": decision.to_json()},
                                 decision.promoted)
        engine.dispose()
    except Exception as exc:
        log.warning("could not record version %s in the database: %s", name, exc)


def _provenance(face_base: Path | None) -> str | None:
    """Where the face model came from: carried over from the version it was fine-tuned from."""
    if face_base is None:
        return None
    params = face_base.parent / "params.json"
    if params.is_file():
        import json

        earlier = json.loads(params.read_text()).get("face_base_provenance")
        if earlier:
            return earlier
    note = face_base.with_suffix(".provenance.txt")
    return note.read_text().strip() if note.is_file() else f"face model file {face_base}"
