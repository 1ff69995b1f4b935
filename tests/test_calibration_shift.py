"""The per-regime logit shift: a threshold fitted on the validation split against a lean of the
errors to one label, applied at serving, absent (0) in versions saved before it."""

from __future__ import annotations

import json

import numpy as np

from moodwatch.pipeline import PIPELINE_FILE, Combination, combine_logits
from moodwatch.vocab import Regime
from trainer.calibration import fit_combination, fit_shift


def leaning(n: int, bias: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model that calls too many photos sad: the truth is sigmoid(z - bias)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(z - bias)))).astype(np.float64)
    return z, y


def test_the_shift_undoes_a_lean_and_stays_near_zero_without_one():
    z, y = leaning(4000, bias=1.0)
    assert -1.3 < fit_shift(z, y) < -0.7
    z, y = leaning(4000, bias=0.0)
    assert abs(fit_shift(z, y)) <= 0.15


def test_each_regime_gets_its_own_shift_and_serving_applies_it():
    z_whole, y_whole = leaning(600, bias=1.0, seed=1)
    z_face, y_face = leaning(600, bias=-1.0, seed=2)
    whole = np.concatenate([z_whole, z_face])
    faces = [None] * 600 + [np.array([v]) for v in z_face]
    close = [False] * 1200
    y = np.concatenate([y_whole, y_face])
    # Faces mix half face logit, half whole logit: the same value, so the mix is z_face itself.
    c = fit_combination(whole, faces, close, y, face_weight=0.5)
    assert c.shift < -0.5 and c.face_shift > 0.5
    unshifted = fit_combination(whole, faces, close, y, face_weight=0.5, shift=False)
    assert unshifted.shift == 0.0 and unshifted.face_shift == 0.0
    z, regimes = combine_logits(whole, faces, close, c)
    z0, _ = combine_logits(whole, faces, close, unshifted)
    is_whole = np.array(regimes) == Regime.WHOLE
    assert np.allclose(z[is_whole] - z0[is_whole], c.shift)
    assert np.allclose(z[~is_whole] - z0[~is_whole], c.face_shift)


def test_a_version_saved_before_the_shift_loads_without_one(tmp_path):
    (tmp_path / PIPELINE_FILE).write_text(json.dumps({"face_weight": 0.5, "temperature": 1.3,
                                                      "face_temperature": 0.9}))
    c = Combination.load(tmp_path)
    assert c is not None and c.shift == 0.0 and c.face_shift == 0.0
    saved = Combination(shift=0.25, face_shift=-0.5).to_json()
    (tmp_path / PIPELINE_FILE).write_text(json.dumps(saved))
    again = Combination.load(tmp_path)
    assert again is not None and (again.shift, again.face_shift) == (0.25, -0.5)
