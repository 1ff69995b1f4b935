"""Whether a candidate version replaces the current one: a paired test on the same photos.

The candidate and the current version are scored on the same held-out photos (the stable test
split: neither was trained on them). Promotion needs three things:

1. enough curated photos (a minimum per class; below it nothing is promoted, even by force),
2. more photos right than the current version, by a margin an exact one-sided McNemar test
   supports at ``ALPHA``, and
3. a calibration error (ECE) not worse than the current one's by more than ``ECE_MARGIN``.

Why McNemar: on the same photos, only the photos on which the two versions disagree carry
information about which is better; under "equally good" each disagreement is a fair coin, so
the exact binomial tail is the p-value, valid at any sample size (no normal approximation) and
deterministic (a paired bootstrap would make the decision depend on a random seed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from moodwatch.modelio import is_sad
from trainer.evaluation import metrics_from_scores
from trainer.report import expected_calibration_error

ALPHA = 0.05  # one-sided: the candidate must be better, not merely different
ECE_MARGIN = 0.02  # ECE on ~50-200 photos moves by about this much between equally good models


@dataclass(frozen=True)
class Figures:
    """One version's figures on the test photos."""

    accuracy: float
    f1: float
    ece: float
    n: int

    @classmethod
    def of(cls, y: np.ndarray, scores: np.ndarray) -> Figures:
        m = metrics_from_scores(y, scores)
        ece = expected_calibration_error(np.asarray(y).astype(int), np.asarray(scores)) if len(y) else 0.0
        return cls(m["accuracy"], m["f1"], ece, m["n"])


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    test_n: int
    candidate: Figures
    current: Figures | None = None
    candidate_only_right: int = 0  # McNemar's b: photos only the candidate gets right
    current_only_right: int = 0  # McNemar's c
    p_value: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_p(b: int, c: int) -> float:
    """One-sided exact McNemar: P(at least b of the b + c disagreements favour the candidate)
    when each is a fair coin."""
    n = b + c
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n)


def decide(y: np.ndarray, candidate: np.ndarray, current: np.ndarray | None, *, enough_data: bool,
           minimum_note: str = "", force: bool = False) -> Decision:
    """The promotion decision from the two versions' scores on the same test photos."""
    y = np.asarray(y).astype(int).reshape(-1)
    cand = Figures.of(y, candidate)
    n = len(y)
    if not enough_data:
        return Decision(False, f"not promoted: {minimum_note}", n, cand)
    if current is None:
        return Decision(True, "promoted: no current model", n, cand)
    cur = Figures.of(y, current)
    cand_right = is_sad(np.asarray(candidate).reshape(-1)).astype(int) == y
    cur_right = is_sad(np.asarray(current).reshape(-1)).astype(int) == y
    b = int(np.sum(cand_right & ~cur_right))
    c = int(np.sum(~cand_right & cur_right))
    p = mcnemar_p(b, c)
    figures = dict(test_n=n, candidate=cand, current=cur, candidate_only_right=b, current_only_right=c,
                   p_value=p)
    said = (f"accuracy {cand.accuracy:.3f} vs current {cur.accuracy:.3f} on the same {n} test photos "
            f"({b} only the candidate gets right, {c} only the current one; McNemar p = {p:.3f})")
    if force:
        return Decision(True, f"promoted: forced (--promote); {said}", **figures)
    if b <= c or p >= ALPHA:
        return Decision(False, f"not promoted: not better by a margin the test supports (needs p < "
                               f"{ALPHA}): {said}", **figures)
    if cand.ece > cur.ece + ECE_MARGIN:
        return Decision(False, f"not promoted: calibration worse (ECE {cand.ece:.3f} vs current "
                               f"{cur.ece:.3f}, allowed +{ECE_MARGIN}); {said}", **figures)
    return Decision(True, f"promoted: better: {said}; ECE {cand.ece:.3f} vs {cur.ece:.3f}", **figures)
