"""Saving a trained version: its model files (and their LiteRT conversions), its parameters,
and its record in the registry, the run log and the database."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from moodwatch.pipeline import CLOSE_UP_MODEL_FILE, FACE_MODEL_FILE, PIPELINE_FILE, Pipeline
from moodwatch.publication import publish_promotion
from moodwatch.registry import Registry, Version, write_json
from moodwatch.settings import Settings
from trainer.convert import HeldOut, convert_version
from trainer.dataset import Item, Split
from trainer.plots import save_history_plots
from trainer.promotion import Decision
from trainer.recipe import TrainOptions

log = logging.getLogger(__name__)


def save_lean(model: keras.Model, path: Path) -> None:
    """Save the weights and architecture without the optimizer's state: a third of the size."""
    lean = keras.Model.from_config(model.get_config())
    lean.set_weights(model.get_weights())
    lean.save(path)


def save_pipeline(pipeline: Pipeline, history: dict[str, Any], version: Version,
                  close_up_base: Path | None, held_out: HeldOut | None = None) -> None:
    """The version's models, its combination, their conversions (int8 ones checked on held_out,
    its test photos) and its training curves."""
    save_lean(pipeline.whole, version.model_path)
    if pipeline.face is not None:
        save_lean(pipeline.face, version.path / FACE_MODEL_FILE)
        if close_up_base is not None:
            shutil.copyfile(close_up_base, version.path / CLOSE_UP_MODEL_FILE)
    write_json(version.path / PIPELINE_FILE, pipeline.combination.to_json())
    convert_version(version.path, strict=False, held_out=held_out)  # LiteRT copies to serve
    save_history_plots(history, version.path)


def _files(items: list[Item]) -> list[dict[str, str]]:
    return [{"path": str(i.path), "label": i.label, "sha256": i.sha256} for i in items]


def version_params(options: TrainOptions, face_base: Path | None, split: Split,
                   data_fingerprint: str) -> dict[str, Any]:
    """What params.json says of how the version was trained, and on which photos."""
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
        "data_fingerprint": data_fingerprint,
        "counts": {"train": len(split.train), "validation": len(split.validation),
                   "test": len(split.test)},
        "split": {"train": _files(split.train), "validation": _files(split.validation),
                  "test": _files(split.test)},
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }


def _provenance(face_base: Path | None) -> str | None:
    """Where the face model came from: carried over from the version it was fine-tuned from."""
    if face_base is None:
        return None
    params = face_base.parent / "params.json"
    if params.is_file():
        earlier = json.loads(params.read_text()).get("face_base_provenance")
        if earlier:
            return earlier
    note = face_base.with_suffix(".provenance.txt")
    return note.read_text().strip() if note.is_file() else f"face model file {face_base}"


def register(settings: Settings, registry: Registry, version: Version, architecture: str,
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
