"""Calibration: a temperature per regime, fitted on the validation split, so a version's
confidence means what it says. Serving only applies what is fitted here
(moodwatch.pipeline.combine_logits); this module needs no TensorFlow."""

from __future__ import annotations

import numpy as np

from moodwatch.pipeline import EPS, Combination, Pipeline, Prepared, combine_logits, sigmoid
from moodwatch.vocab import Regime

# A regime with fewer validation photos than this borrows its temperature (see fit_combination).
MIN_PER_REGIME = 5
# A temperature fitted on 40 validation photos swung from 0.25 to 0.78 between cross-validation
# folds: log T's prior, N(0, 0.5^2), keeps such a fit near the logits as they are unless the
# photos say otherwise (README, the model's figures: calibration rules compared).
TEMPERATURE_PRIOR_SD = 0.5
# The logit shift's prior, N(0, 0.5^2): out of fold on 2,341 photos a free shift corrected the
# lean of errors to one label (README, the model's figures); the prior keeps a few validation
# photos from moving the threshold far.
SHIFT_PRIOR_SD = 0.5
SHIFTS = np.linspace(-2.0, 2.0, 81)


def fit_temperature(z: np.ndarray, y: np.ndarray, prior_sd: float | None = None) -> float:
    """The temperature that minimises the log loss of sigmoid(z / T) (a 1-D search).

    prior_sd: a Gaussian prior on log T around 0 (the logits as they are), so a temperature
    fitted on a few dozen photos, most of them right, is not driven to extremes by one or two
    mistakes; its pull fades as the photos grow in number (it is weighed against their summed loss).
    """
    best, best_t = float("inf"), 1.0
    for t in np.exp(np.linspace(np.log(0.25), np.log(8), 80)):
        p = np.clip(sigmoid(z / t), EPS, 1 - EPS)
        loss = -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))
        if prior_sd is not None:
            loss += np.log(t) ** 2 / (2 * prior_sd**2)
        if loss < best:
            best, best_t = loss, float(t)
    return best_t


def fit_shift(z: np.ndarray, y: np.ndarray, prior_sd: float = SHIFT_PRIOR_SD) -> float:
    """The shift b that minimises the log loss of sigmoid(z + b) under b's prior (a 1-D search)."""
    if len(z) == 0:
        return 0.0
    p = np.clip(sigmoid(np.asarray(z)[None, :] + SHIFTS[:, None]), EPS, 1 - EPS)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(axis=1) + SHIFTS**2 / (2 * prior_sd**2)
    return float(SHIFTS[int(np.argmin(loss))])


def calibrate(pipeline: Pipeline, prepared: list[Prepared], y: np.ndarray) -> Combination:
    """Fit a temperature per regime on the validation split, so confidence means what it says."""
    whole, faces, close = pipeline.raw(prepared)
    return fit_combination(whole, faces, close, y, pipeline.combination.face_weight)


def fit_combination(whole: np.ndarray, faces: list[np.ndarray | None], close: list[bool], y: np.ndarray,
                    face_weight: float, prior_sd: float | None = TEMPERATURE_PRIOR_SD,
                    min_per_regime: int = MIN_PER_REGIME, shift: bool = True) -> Combination:
    """The temperatures (and, with shift, the logit shifts) for held-back photos' raw logits
    (see Pipeline.raw).

    Photos with faces and photos read as a whole differ in how often they are right, so each
    regime gets its own temperature, fitted on its own photos. A regime with too few of them
    borrows: faces the temperature of every photo's combined logit, photos read whole that of
    every photo's whole-image logit (they are scored by the whole-image CNN alone); close-ups
    are left out of both. Close-ups keep the face model's own calibration (fitted on its 12,000
    crops). A regime's shift is fitted on its own photos after its temperature, only where it
    has at least min_per_regime of them (it borrows none).
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
    if shift:
        z, _ = combine_logits(whole, faces, close, base)
        if is_faces.sum() >= min_per_regime:
            base.face_shift = fit_shift(z[is_faces], y[is_faces])
        if is_whole.sum() >= min_per_regime:
            base.shift = fit_shift(z[is_whole], y[is_whole])
    base.regimes = {r: regimes.count(r) for r in set(regimes)}
    return base
