"""The figures a model is promoted on label a score the way serving does."""

import numpy as np

from moodwatch.modelio import label_for
from trainer.evaluation import metrics_from_scores
from trainer.report import Evaluated, calibration_table


def test_a_score_of_one_half_is_sad_everywhere():
    # Serving calls 0.5 sad; the test figures used to call it happy (keras' "> 0.5").
    assert label_for(0.5)[0] == "sad"
    assert Evaluated("x.jpg", "sad", 0.5).predicted == "sad"
    m = metrics_from_scores(np.array([1, 0]), np.array([0.5, 0.2]))
    assert m["accuracy"] == 1.0 and m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["confusion_matrix"]["rows_true_cols_predicted"] == [[1, 0], [0, 1]]
    assert calibration_table(np.array([1]), np.array([0.5]))[0]["accuracy"] == 1.0


def test_metrics_count_mistakes():
    m = metrics_from_scores(np.array([1, 1, 0, 0]), np.array([0.9, 0.1, 0.7, 0.2]))
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["confusion_matrix"]["rows_true_cols_predicted"] == [[1, 1], [1, 1]]
