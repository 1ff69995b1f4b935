"""Honest figures on any labelled folder: accuracy, precision, recall, F1, ROC AUC, confusion
matrix, a calibration table, and per-file predictions; and the report of a training run (what
`moodwatch train` and `moodwatch retrain` print: the candidate against the current version on
the same test photos, then the decision)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from db.export import csv_cell
from moodwatch.images import extension_allowed
from moodwatch.modelio import is_sad
from moodwatch.vocab import LABELS
from trainer.evaluation import metrics_from_scores

if TYPE_CHECKING:  # trainer.training loads TensorFlow; a report needs only its result's fields
    from trainer.training import TrainResult

CALIBRATION_BINS = ((0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 0.95), (0.95, 1.0001))


@dataclass
class Evaluated:
    path: str
    truth: str
    score: float | None  # P(sad)
    error: str | None = None

    @property
    def predicted(self) -> str | None:
        return None if self.score is None else ("sad" if is_sad(self.score) else "happy")

    @property
    def confidence(self) -> float | None:
        return None if self.score is None else max(self.score, 1 - self.score)


def labelled_files(folder: Path) -> list[tuple[str, str]]:
    if not folder.is_dir():
        raise ValueError(f"folder {folder} does not exist")
    out = []
    for label in LABELS:
        sub = folder / label
        if not sub.is_dir():
            raise ValueError(f"{folder} needs a {label}/ subfolder")
        out += [(str(p), label) for p in sorted(sub.rglob("*")) if p.is_file() and extension_allowed(p.name)]
    if not out:
        raise ValueError(f"no images under {folder}/happy or {folder}/sad")
    return out


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties count half)."""
    pos, neg = scores[y == 1], scores[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allscores = np.concatenate([pos, neg])[order]
    ranks[order] = np.arange(1, len(order) + 1)
    # average ranks over ties
    _, inverse, counts = np.unique(allscores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks[order])
    ranks[order] = (sums / counts)[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def calibration_table(y: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """For each confidence band: how many predictions, their mean confidence, how many right."""
    conf = np.maximum(scores, 1 - scores)
    right = is_sad(scores).astype(int) == y
    table = []
    for lo, hi in CALIBRATION_BINS:
        m = (conf >= lo) & (conf < hi)
        n = int(m.sum())
        table.append({"band": f"{lo:.2f}-{min(hi, 1.0):.2f}", "n": n,
                      "mean_confidence": float(conf[m].mean()) if n else None,
                      "accuracy": float(right[m].mean()) if n else None})
    return table


def expected_calibration_error(y: np.ndarray, scores: np.ndarray) -> float:
    table = calibration_table(y, scores)
    total = sum(r["n"] for r in table)
    return float(sum(r["n"] * abs(r["accuracy"] - r["mean_confidence"]) for r in table if r["n"]) / total)


def summarise(results: list[Evaluated]) -> dict[str, Any]:
    ok = [r for r in results if r.score is not None]
    y = np.array([LABELS.index(r.truth) for r in ok])
    s = np.array([r.score for r in ok], dtype=np.float32)
    m = metrics_from_scores(y, s)
    m["roc_auc"] = roc_auc(y, s)
    m["calibration"] = calibration_table(y, s)
    m["ece"] = expected_calibration_error(y, s)
    m["unreadable"] = len(results) - len(ok)
    return m


def write_csv(results: list[Evaluated], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "truth", "predicted", "confidence", "score_sad", "correct", "error"])
        for r in results:
            w.writerow([csv_cell(r.path), r.truth, r.predicted or "",
                        "" if r.confidence is None else f"{r.confidence:.4f}",
                        "" if r.score is None else f"{r.score:.4f}",
                        "" if r.score is None else int(r.predicted == r.truth), csv_cell(r.error or "")])


def format_report(name: str, m: dict[str, Any], images_per_s: float | None = None) -> str:
    cm = m["confusion_matrix"]["rows_true_cols_predicted"]
    lines = [
        f"{name}: {m['n']} images" + (f", {m['unreadable']} unreadable" if m.get("unreadable") else ""),
        f"  accuracy {m['accuracy']:.3f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
        f"F1 {m['f1']:.3f}  ROC AUC {m['roc_auc']:.3f}  (positive class: sad)",
        f"  confusion (rows true, cols predicted):  happy->happy {cm[0][0]}  happy->sad {cm[0][1]}  "
        f"sad->happy {cm[1][0]}  sad->sad {cm[1][1]}",
        f"  calibration (expected calibration error {m['ece']:.3f}):",
        "    confidence    n   mean conf   accuracy",
    ]
    for row in m["calibration"]:
        if row["n"]:
            lines.append(f"    {row['band']:<11} {row['n']:>4}   {row['mean_confidence']:.3f}       "
                         f"{row['accuracy']:.3f}")
        else:
            lines.append(f"    {row['band']:<11} {0:>4}")
    if images_per_s:
        lines.append(f"  speed: {images_per_s:.1f} images/s (decode + predict, batched)")
    return "\n".join(lines)


def decision_table(decision: dict[str, Any], candidate: str, current: str | None) -> str:
    """Candidate against current on the same test photos, then the decision in one line."""
    lines = [f"{'':<10} {'version':<44} {'accuracy':>8} {'F1':>6} {'ECE':>6} {'n':>5}"]
    for role, name, fig in (("candidate", candidate, decision["candidate"]),
                            ("current", current, decision.get("current"))):
        if fig:
            lines.append(f"{role:<10} {name or '-':<44} {fig['accuracy']:>8.3f} {fig['f1']:>6.3f} "
                         f"{fig['ece']:>6.3f} {fig['n']:>5}")
    return "\n".join([*lines, decision["reason"]])


def training_json(result: TrainResult) -> dict[str, Any]:
    """`moodwatch train --json`: the version, the decision, its test figures and timings."""
    return {"version": result.version.name, "decision": result.decision.to_json(),
            "test": result.metrics, "timings": result.timings}


def training_report(result: TrainResult) -> str:
    """`moodwatch train`'s text: the cleaning, the new version, its confusion and time, the decision."""
    lines = [f"cleaning: {result.clean.summary()}"]
    lines += [f"  quarantined {src} -> {dest}: {reason}" for src, dest, reason in result.clean.quarantined]
    lines.append(f"version: {result.version.name}  ({result.version.path})")
    cm = result.metrics["confusion_matrix"]["rows_true_cols_predicted"]
    lines.append(f"confusion on the test photos (rows true happy/sad, cols predicted happy/sad): {cm}")
    t = result.timings
    lines.append(f"time: {t['total_s']:.1f}s total, {t['epoch_s']:.2f}s per epoch")
    lines.append(decision_table(result.decision.to_json(), result.version.name,
                                (result.current_metrics or {}).get("version")))
    return "\n".join(lines)


def retrain_report(outcome: dict[str, Any]) -> str:
    """`moodwatch retrain`'s text: the decision table after a training run, else why it was skipped."""
    if "decision" in outcome:
        return decision_table(outcome["decision"], outcome["version"], outcome.get("current"))
    return f"{outcome['outcome']}: {outcome['reason']}"
