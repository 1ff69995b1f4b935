"""Face crops, the combination rule and calibration."""

from __future__ import annotations

import numpy as np

from moodwatch.faces import FACE_SIZE, face_inputs
from moodwatch.pipeline import Combination, combine_logits, fit_temperature, logit, sigmoid
from tests.imagegen import face_like


def test_close_up_without_detection_is_its_own_face():
    small = face_like("happy", 1, 48)
    fi = face_inputs(small)
    assert fi.close_up and fi.crops.shape == (1, FACE_SIZE, FACE_SIZE, 1) and fi.boxes == []


def test_large_photo_without_a_face_has_no_crops():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)
    fi = face_inputs(noise)
    assert not fi.close_up and len(fi.crops) == 0


def test_combination_rules():
    c = Combination(face_weight=0.5, temperature=2.0, close_up_temperature=4.0)
    whole = np.array([1.0, 1.0, 1.0])
    z, regime = combine_logits(whole, [None, np.array([3.0]), np.array([-4.0])], [False, False, True], c)
    assert regime == ["whole", "faces", "close-up"]
    np.testing.assert_allclose(z, [0.5, 1.0, -1.0])


def test_temperature_fixes_overconfidence():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 4000)
    true_z = (y * 2 - 1) * 1.0 + rng.normal(0, 1.5, 4000)  # moderately separable
    p_true = sigmoid(true_z)
    y = (rng.random(4000) < p_true).astype(int)
    over = true_z * 4  # an overconfident model: logits four times too large
    t = fit_temperature(over, y)
    assert 3.0 < t < 5.5
    np.testing.assert_allclose(logit(sigmoid(over / t)), over / t, atol=1e-6)
