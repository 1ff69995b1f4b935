"""One training run, from curated folders to a registered (and maybe promoted) version: the
orchestration of trainer.recipe (how to fit), trainer.calibration, trainer.promotion (whether to
promote) and trainer.versioning (what a version holds)."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from moodwatch.pipeline import CLOSE_UP_MODEL_FILE, FACE_MODEL_FILE, Pipeline, Prepared
from moodwatch.registry import Registry, RegistryError, Version, write_json
from moodwatch.settings import Settings
from moodwatch.vocab import LABELS
from trainer.cleaning import CleanReport, clean_folders
from trainer.convert import HeldOut
from trainer.dataset import (
    DatasetError,
    Split,
    fingerprint,
    labels_of,
    make_items,
    prepare_items,
    split_items,
    stable_split,
)
from trainer.dedupe import near_duplicate_key
from trainer.evaluation import metrics_from_scores
from trainer.promotion import Decision, decide
from trainer.recipe import TrainOptions, close_up_model_for, fit_models, whole_start
from trainer.versioning import register, save_pipeline, version_params

log = logging.getLogger(__name__)


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
        return Pipeline.load(current.path, runtime="keras").scores(test_prep)  # as the candidate
    except Exception as exc:
        log.warning("could not evaluate current model %s: %s", current.name, exc)
        return None


def train(settings: Settings, options: TrainOptions) -> TrainResult:
    """Clean, split, fit, evaluate against the current model, write a version, maybe promote.

    Every training parameter comes from options (trainer.recipe.recipe); settings say where the
    folders, the registry and the database are, and how large a photo may be.

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
    _announce(options, split, current if init_whole else None, shortfall)

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
        save_pipeline(pipeline, history, version, close_up_base, HeldOut(data.test, y_test))
        timings["total_s"] = time.perf_counter() - t0
        write_json(version.path / "metrics.json", {
            "test": metrics, "current_on_same_test": current_metrics, "promoted": decision.promoted,
            "promotion_reason": decision.reason, "decision": decision.to_json(), "epochs_run": epochs_run,
            "started_from": current.name if init_whole else "scratch",
            "history": {k: [float(v) for v in vals] for k, vals in history.items()}, "timings": timings,
        })
        write_json(version.path / "params.json",
                   version_params(options, face_base, split, data.data_fingerprint))
    except BaseException:
        shutil.rmtree(version.path, ignore_errors=True)  # this run's own, unfinished folder
        raise
    register(settings, registry, version, options.architecture + ("+faces" if face_base else ""),
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


def _announce(options: TrainOptions, split: Split, start: Version | None, shortfall: str | None) -> None:
    """What this run trains on, what it starts from, and whether it can be promoted at all."""
    say(options, f"curated photos: {len(split.train)} train, {len(split.validation)} validation, "
                 f"{len(split.test)} test (stable split by content hash); starting from "
                 + (f"{start.name}'s weights" if start else "scratch"))
    if shortfall:
        say(options, shortfall + ": training, but this version will not be promoted")


def say(options: TrainOptions, line: str) -> None:
    """A line for the person watching a training run (above its progress bar), and the log."""
    log.info(line)
    if options.progress:
        tqdm.write(line)

