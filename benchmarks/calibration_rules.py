"""Compare calibration rules and face weights on the same trained cross-validation models.

    SCORES_OUT=oof.json python benchmarks/crossval.py ../shared/datasets/web-happy-sad default+faces
    python benchmarks/calibration_rules.py oof.json [default+faces]

Each fold's rule is fitted on that fold's validation photos (trainer.calibration.fit_combination, the
function training uses) and applied to its test photos; the figures pool the 5 test folds.
"""

import json
import sys
from pathlib import Path

import numpy as np

from moodwatch.pipeline import combine_logits, sigmoid
from trainer.calibration import fit_combination
from trainer.evaluation import metrics_from_scores
from trainer.report import calibration_table, expected_calibration_error, roc_auc

# (prior on log T, fewest photos for a regime's own temperature, face weight)
RULES = [(None, 20, 0.5), (None, 5, 0.5), (0.5, 20, 0.5), (0.5, 5, 0.5), (0.5, 5, 0.6), (0.5, 5, 0.7)]


def arrays(rows: list[dict]) -> tuple[np.ndarray, list, list[bool], np.ndarray]:
    whole = np.array([r["whole"] for r in rows])
    faces = [None if r["face"] is None else np.array([r["face"]]) for r in rows]
    close = [r["regime"] == "close-up" for r in rows]
    return whole, faces, close, np.array([r["truth"] for r in rows], dtype=np.float64)


def out_of_fold(folds: list[dict], prior_sd: float | None, fewest: int,
                weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_all, p_all, regimes_all = [], [], []
    for fold in folds:
        combination = fit_combination(*arrays(fold["raw"]["validation"]), face_weight=weight,
                                      prior_sd=prior_sd, min_per_regime=fewest)
        whole, faces, close, y = arrays(fold["raw"]["test"])
        z, regimes = combine_logits(whole, faces, close, combination)
        y_all.append(y)
        p_all.append(sigmoid(z))
        regimes_all += regimes
    return np.concatenate(y_all), np.concatenate(p_all), np.array(regimes_all)


def line(name: str, y: np.ndarray, p: np.ndarray) -> str:
    m = metrics_from_scores(y, p)
    auc = roc_auc(y.astype(int), p)
    top = calibration_table(y, p)[-1]  # the 0.95-1.00 band
    right = top["accuracy"] if top["n"] else float("nan")
    return (f"{name}: n {len(y)} acc {m['accuracy']:.3f} F1 {m['f1']:.3f} AUC {auc:.3f} "
            f"ECE {expected_calibration_error(y, p):.3f} top band {top['n']} at {right:.3f}")


def main() -> None:
    saved = json.loads(Path(sys.argv[1]).read_text())
    folds = saved[sys.argv[2] if len(sys.argv) > 2 else "default+faces"]
    for prior_sd, fewest, weight in RULES:
        y, p, regimes = out_of_fold(folds, prior_sd, fewest, weight)
        print(line(f"prior sd {prior_sd}, own temperature from {fewest} photos, face weight {weight}", y, p))
        for regime in ("faces", "whole"):
            sel = regimes == regime
            print("    " + line(regime, y[sel], p[sel]))


if __name__ == "__main__":
    main()
