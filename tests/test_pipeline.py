"""Face crops, the combination rule and calibration."""

from __future__ import annotations

import numpy as np

from moodwatch.faces import FACE_SIZE, face_inputs
from moodwatch.pipeline import Combination, combine_logits, logit, sigmoid
from tests.imagegen import face_like
from trainer.calibration import fit_temperature


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


def test_each_regime_has_its_own_temperature():
    c = Combination(face_weight=0.5, temperature=2.0, face_temperature=0.5)
    z, regime = combine_logits(np.array([1.0, 1.0]), [None, np.array([3.0])], [False, False], c)
    assert regime == ["whole", "faces"]
    np.testing.assert_allclose(z, [0.5, 4.0])


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


def calibrated_logits(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from them: sigmoid(z) is the true chance of sad."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    true_z = (y * 2 - 1) * 1.5 + rng.normal(0, 1.0, n)
    return true_z, (rng.random(n) < sigmoid(true_z)).astype(float)


def test_calibrate_fits_faces_and_whole_photos_apart():
    from trainer.calibration import calibrate

    n = 400
    true_z, y = calibrated_logits(2, n)
    has_face = np.arange(n) % 2 == 0
    whole = np.where(has_face, 0.0, true_z * 4)  # overconfident whole-image logits

    class Raw:  # what calibrate reads of a pipeline: its raw logits and its face weight
        combination = Combination(face_weight=1.0)

        def raw(self, prepared):
            faces = [np.array([z * 0.5]) if f else None for z, f in zip(true_z, has_face, strict=True)]
            return whole, faces, [False] * n

    c = calibrate(Raw(), [None] * n, y)
    assert c.regimes == {"faces": n // 2, "whole": n // 2}
    assert c.face_temperature < 0.8 and c.temperature > 2.5


def test_the_temperature_prior_holds_few_photos_and_yields_to_many():
    rng = np.random.default_rng(3)

    def sample(n):
        y = rng.integers(0, 2, n)
        z = (y * 2 - 1) * 2.0 + rng.normal(0, 1.0, n)
        y = (rng.random(n) < sigmoid(z)).astype(int)
        return z * 3, y  # logits three times too sure

    z, y = sample(12)
    free, held = fit_temperature(z, y), fit_temperature(z, y, prior_sd=0.5)
    assert abs(np.log(held)) < abs(np.log(free))  # pulled towards T = 1
    z, y = sample(5000)
    assert abs(fit_temperature(z, y, prior_sd=0.5) - fit_temperature(z, y)) / fit_temperature(z, y) < 0.1


def test_a_regime_with_too_few_photos_borrows_the_whole_image_logits_temperature():
    from trainer.calibration import fit_combination

    n = 300
    true_z, y = calibrated_logits(4, n)
    whole = true_z * 4  # the whole-image CNN: four times too sure on every photo
    faces = [np.array([30.0 * (2 * t - 1)]) if i >= 3 else None for i, t in enumerate(y)]  # faces: all right
    c = fit_combination(whole, faces, [False] * n, y, face_weight=0.5, prior_sd=None, min_per_regime=5)
    assert c.regimes == {"faces": n - 3, "whole": 3}
    # Three photos read whole: their temperature comes from every photo's whole-image logit.
    assert 3.0 < c.temperature < 5.5


def test_faces_with_too_few_photos_borrow_the_combined_temperature_and_no_face_model_sets_none():
    from trainer.calibration import fit_combination

    n = 300
    true_z, y = calibrated_logits(5, n)
    whole = true_z * 4
    faces = [np.array([true_z[i] * 4]) if i < 3 else None for i in range(n)]  # three photos with a face
    c = fit_combination(whole, faces, [False] * n, y, face_weight=0.5, prior_sd=None, min_per_regime=5)
    assert c.regimes == {"faces": 3, "whole": n - 3}
    # From every photo's combined logit (four times too sure), not from three photos.
    assert c.face_temperature == c.temperature and 2.5 < c.face_temperature < 6
    whole_only = fit_combination(whole, [None] * n, [False] * n, y, face_weight=0.5)
    assert whole_only.face_temperature is None and 2.5 < whole_only.temperature < 6
