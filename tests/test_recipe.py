"""The shipped version and the nightly retrain are trained by one recipe (trainer.recipe.recipe)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

from click.testing import CliRunner

import trainer.recipe
import trainer.retrain
import trainer.training
from moodwatch.settings import Settings
from moodwatch_app.cli import main
from trainer.architectures import DEFAULT_ARCHITECTURE
from trainer.dataset import DatasetError


def test_moodwatch_train_and_the_nightly_retrain_run_the_same_recipe(tmp_path, monkeypatch):
    seen = []

    def capture(settings, options):
        seen.append(options)
        raise DatasetError("captured")  # stop before any training

    monkeypatch.setattr(trainer.training, "train", capture)
    monkeypatch.setattr(trainer.retrain, "train", capture)
    monkeypatch.setattr(trainer.retrain, "training_lock", lambda url: contextlib.nullcontext(True))
    env = {"MOODWATCH_DATA_DIR": str(tmp_path), "MOODWATCH_MODEL_DIR": str(tmp_path / "models"),
           "MOODWATCH_RETRAIN_EPOCHS": "7"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from moodwatch.settings import get_settings

    get_settings.cache_clear()
    try:
        CliRunner().invoke(main, ["train", "--data", str(tmp_path)], env=env)
    finally:
        get_settings.cache_clear()
    outcome = trainer.retrain.retrain(Settings(), "redis://unused", force=True)
    assert outcome["outcome"] == "skipped" and len(seen) == 2
    shipped, nightly = seen
    assert nightly.epochs == 7 and nightly.patience == trainer.recipe.RECIPE_PATIENCE
    # The runs differ only in the progress bar and the nightly's "unchanged data" check.
    assert replace(shipped, progress=False, skip_if_fingerprint=None) == nightly


def test_cross_validation_measures_the_same_recipe(tmp_path, monkeypatch):
    """The figures in the README's model section come from benchmarks/crossval.py: they must be
    figures of the recipe that is shipped and run nightly, not of a cheaper one."""
    import trainer.crossval
    from tests.imagegen import make_curated

    seen = []

    def capture(options, *args, **kwargs):
        seen.append(options)
        raise DatasetError("captured")

    monkeypatch.setattr(trainer.crossval, "fit_models", capture)
    monkeypatch.setenv("MOODWATCH_RETRAIN_EPOCHS", "9")
    data = make_curated(tmp_path / "data", per_class=6)
    with contextlib.suppress(DatasetError):
        trainer.crossval.cross_validate(data, DEFAULT_ARCHITECTURE, k=2)
    expected = trainer.recipe.recipe(Settings(), data, progress=False)
    assert seen and seen[0].epochs == 9
    assert seen[0] == expected
