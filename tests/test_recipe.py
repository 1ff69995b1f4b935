"""The shipped version and the nightly retrain are trained by one recipe (trainer.recipe.recipe)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import keras
import pytest
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


def test_cross_validation_pairs_face_models_on_one_whole_cnn(tmp_path):
    """benchmarks/crossval.py's FACE_ALTERNATIVES: each alternative face model is fine-tuned and
    calibrated beside the fold's own whole-image CNN. The fold's own face model given again as an
    alternative scores every photo as the fold did (nothing but the face model differs); another
    face model does not."""
    import trainer.crossval
    from tests.imagegen import make_curated
    from trainer.face_model import make_face_model

    base, other = tmp_path / "face.keras", tmp_path / "other.keras"
    make_face_model().save(base)
    keras.utils.set_random_seed(7)
    make_face_model().save(other)
    data = make_curated(tmp_path / "data", per_class=6, size=48)  # close-ups: the face model scores them
    results = trainer.crossval.cross_validate(data, DEFAULT_ARCHITECTURE, k=2, epochs=1, batch_size=8,
                                              face_base=base, face_epochs=1,
                                              face_alternatives=(base, other))
    for r in results:
        same, different = r.metrics["alternatives"][str(base)], r.metrics["alternatives"][str(other)]
        assert same["scores"] == pytest.approx(r.metrics["scores"], abs=1e-6)
        assert same["accuracy"] == r.metrics["accuracy"]
        assert max(abs(a - b) for a, b in zip(different["scores"], r.metrics["scores"], strict=True)) > 1e-3
