"""Test-split figures: precision, recall, accuracy, F1 and the confusion matrix.

Counted here rather than with keras.metrics, whose threshold is "> 0.5": a score of exactly 0.5
is sad when serving (moodwatch.modelio.is_sad), so it is sad in the figures a model is promoted on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moodwatch.modelio import is_sad

# A photo is black and white when its channels agree: the per-pixel spread between the largest
# and the smallest channel stays within JPEG's colour noise for nearly every pixel.
GREY_SPREAD = 12
GREY_QUANTILE = 99


def black_and_white(rgb: np.ndarray) -> bool:
    spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1).astype(np.int16)
    return bool(np.percentile(spread, GREY_QUANTILE) <= GREY_SPREAD)


def metrics_from_scores(y_true: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    y_true = np.asarray(y_true, dtype=np.float32).reshape(-1)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    predicted = is_sad(scores).astype(int)
    truth = y_true.astype(int)
    tp = int(np.sum((truth == 1) & (predicted == 1)))
    p = tp / max(int(predicted.sum()), 1)
    r = tp / max(int(truth.sum()), 1)
    # Rows are the true class, columns the predicted one, in label order (happy, sad).
    confusion = [
        [int(np.sum((truth == t) & (predicted == q))) for q in (0, 1)] for t in (0, 1)
    ]
    return {
        "precision": p,
        "recall": r,
        "accuracy": float(np.mean(predicted == truth)) if len(truth) else 0.0,
        "f1": 0.0 if p + r == 0 else 2 * p * r / (p + r),
        "confusion_matrix": {"labels": ["happy", "sad"], "rows_true_cols_predicted": confusion},
        "n": int(len(y_true)),
        "positive_class": "sad",
    }
