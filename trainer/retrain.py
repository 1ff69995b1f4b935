"""The nightly job: one training run at a time, skipped when the curated data is unchanged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from moodwatch.registry import Registry
from moodwatch.settings import Settings
from moodwatch.vocab import LABELS
from trainer.dataset import DatasetError
from trainer.lock import training_lock
from trainer.recipe import recipe
from trainer.training import DataUnchanged, below_minimum, train

log = logging.getLogger("moodwatch.trainer")


def last_trained_fingerprint(registry: Registry) -> str | None:
    versions = registry.versions()
    return versions[-1].params().get("data_fingerprint") if versions else None


def curated_counts(data_dir: Path) -> dict[str, int]:
    """Photos in data/happy and data/sad by extension: cheap, before any decoding."""
    from moodwatch.images import extension_allowed

    return {label: sum(1 for p in (data_dir / label).rglob("*")
                       if p.is_file() and extension_allowed(p.name))
            if (data_dir / label).is_dir() else 0 for label in LABELS}


def retrain(settings: Settings, broker_url: str, epochs: int | None = None, force: bool = False,
            progress: bool = False) -> dict[str, Any]:
    """Train on DATA_DIR/happy and DATA_DIR/sad if they changed and there are enough of them;
    every run is recorded. ``force`` trains unchanged or too few photos, but the promotion rule
    still never promotes below the minimum."""
    registry = Registry.for_settings(settings)
    with training_lock(broker_url) as acquired:
        if not acquired:
            outcome = {"outcome": "skipped", "reason": "another training run holds the lock"}
            registry.record_run(outcome)
            return outcome
        options = recipe(settings, settings.data_dir, epochs=epochs, progress=progress,
                         skip_if_fingerprint=None if force else last_trained_fingerprint(registry))
        # The recipe's minimum, as train() holds the cleaned photos to it.
        shortfall = below_minimum(curated_counts(options.data_dir), options.min_per_class)
        if shortfall and not force:
            outcome = {"outcome": "skipped", "reason": shortfall}
            registry.record_run(outcome)
            return outcome
        # One pass over the curated files: train() cleans, fingerprints, and stops if unchanged.
        try:
            result = train(settings, options)
        except DatasetError as exc:
            outcome = {"outcome": "skipped", "reason": f"curated data not usable: {exc}"}
            registry.record_run(outcome)
            return outcome
        except DataUnchanged as exc:
            outcome = {"outcome": "skipped", "reason": str(exc), "data_fingerprint": exc.data_fingerprint}
            registry.record_run(outcome)
            return outcome
        return {"outcome": "promoted" if result.promoted else "trained", "reason": result.reason,
                "version": result.version.name, "accuracy": result.metrics["accuracy"],
                "current": (result.current_metrics or {}).get("version"),
                "decision": result.decision.to_json()}
