"""Test-split figures: precision, recall and binary accuracy from keras.metrics, and more."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


def metrics_from_scores(y_true: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    y_true = np.asarray(y_true, dtype=np.float32).reshape(-1)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    precision = keras.metrics.Precision()
    recall = keras.metrics.Recall()
    accuracy = keras.metrics.BinaryAccuracy()
    for metric in (precision, recall, accuracy):
        metric.update_state(y_true, scores)
    p, r = float(precision.result()), float(recall.result())
    predicted = (scores > 0.5).astype(int)
    truth = y_true.astype(int)
    # Rows are the true class, columns the predicted one, in label order (happy, sad).
    confusion = [
        [int(np.sum((truth == t) & (predicted == q))) for q in (0, 1)] for t in (0, 1)
    ]
    return {
        "precision": p,
        "recall": r,
        "accuracy": float(accuracy.result()),
        "f1": 0.0 if p + r == 0 else 2 * p * r / (p + r),
        "confusion_matrix": {"labels": ["happy", "sad"], "rows_true_cols_predicted": confusion},
        "n": int(len(y_true)),
        "positive_class": "sad",
    }
