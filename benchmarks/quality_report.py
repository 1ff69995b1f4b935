"""Out-of-fold figures per recipe, regime, photo set and black-and-white vs colour.

    D=../shared/datasets
    DEDUPE=1 SCORES_OUT=oof.json FACE_MODEL=models/face-fer2013.keras \\
        FER_VAL=$D/fer2013-happy-sad/validation python benchmarks/crossval.py \\
        $D/web-happy-sad,$D/people-happy-sad-extra default+faces colour-blind+faces
    python benchmarks/quality_report.py oof.json

Every variant is fitted on each fold's validation photos only (the calibration training uses,
trainer's fit_combination) and applied to that fold's test photos; the figures pool the 5 test
folds. Variants of one trained recipe: the photos read in colour or in grey (the same models), and
with or without a per-regime shift of the logit (a learned threshold against a lean to one label;
trainer.calibration.fit_shift).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np

from moodwatch.pipeline import combine_logits, sigmoid
from moodwatch.vocab import Regime
from trainer.calibration import fit_combination
from trainer.evaluation import metrics_from_scores
from trainer.report import calibration_table, expected_calibration_error, roc_auc


def arrays(rows: list[dict]) -> tuple[np.ndarray, list, list[bool], np.ndarray]:
    whole = np.array([r["whole"] for r in rows])
    faces = [None if r["face"] is None else np.array([r["face"]]) for r in rows]
    close = [r["regime"] == Regime.CLOSE_UP for r in rows]
    return whole, faces, close, np.array([r["truth"] for r in rows], dtype=np.float64)


def out_of_fold(folds: list[dict], raw_key: str, shift: bool) -> dict[str, np.ndarray]:
    """Pooled test scores of every fold, each fold calibrated on its own validation photos."""
    out: dict[str, list] = {"y": [], "p": [], "regime": [], "source": [], "bw": []}
    for fold in folds:
        raw = fold[raw_key]
        combination = fit_combination(*arrays(raw["validation"]), face_weight=0.5, shift=shift)
        z, regimes = combine_logits(*arrays(raw["test"])[:3], combination)
        y = arrays(raw["test"])[3]
        out["y"].append(y)
        out["p"].append(sigmoid(z))
        out["regime"] += [str(r) for r in regimes]
        out["source"] += fold["sources"]
        out["bw"] += fold["black_and_white"]
    return {"y": np.concatenate(out["y"]), "p": np.concatenate(out["p"]), "regime": np.array(out["regime"]),
            "source": np.array(out["source"]), "bw": np.array(out["bw"], dtype=bool)}


def figures(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    m = metrics_from_scores(y, p)
    top = calibration_table(y, p)[-1]  # the 0.95-1.00 band
    sad_called_happy = int(np.sum((y == 1) & (p < 0.5)))
    happy_called_sad = int(np.sum((y == 0) & (p >= 0.5)))
    return {"n": len(y), "accuracy": m["accuracy"], "f1": m["f1"],
            "auc": roc_auc(y.astype(int), p) if len(set(y)) > 1 else float("nan"),
            "ece": expected_calibration_error(y, p), "top_n": top["n"],
            "top_right": top["accuracy"] if top["n"] else float("nan"),
            "happy_as_sad": happy_called_sad, "sad_as_happy": sad_called_happy}


def cell(f: dict[str, float]) -> str:
    return (f"{f['n']}: {f['accuracy']:.3f}, F1 {f['f1']:.3f}, AUC {f['auc']:.3f}, ECE {f['ece']:.3f}, "
            f"top band {f['top_right']:.1%} of {f['top_n']}, errors happy->sad {f['happy_as_sad']} / "
            f"sad->happy {f['sad_as_happy']}")


def report(name: str, folds: list[dict], raw_key: str, shift: bool) -> None:
    d = out_of_fold(folds, raw_key, shift)
    print(f"## {name}")
    print(f"- all: {cell(figures(d['y'], d['p']))}")
    per_fold = []
    start = 0
    for fold in folds:
        n = len(fold["truth"])
        per_fold.append(figures(d["y"][start:start + n], d["p"][start:start + n])["accuracy"])
        start += n
    print(f"- per fold accuracy: {', '.join(f'{a:.3f}' for a in per_fold)} "
          f"(mean {statistics.mean(per_fold):.3f} ± {statistics.stdev(per_fold):.3f})")
    for regime in sorted(set(d["regime"])):
        sel = d["regime"] == regime
        print(f"- regime {regime}: {cell(figures(d['y'][sel], d['p'][sel]))}")
    for source in sorted(set(d["source"])):
        sel = d["source"] == source
        print(f"- set {source}: {cell(figures(d['y'][sel], d['p'][sel]))}")
    for label, sel in (("black and white", d["bw"]), ("colour", ~d["bw"])):
        print(f"- {label}: {cell(figures(d['y'][sel], d['p'][sel]))}")
    fer = [f["fer_accuracy"] for f in folds if f.get("fer_accuracy") is not None]
    if fer:
        print(f"- FER-2013 validation, each fold's fine-tuned face CNN: mean {statistics.mean(fer):.3f} "
              f"(folds {', '.join(f'{a:.3f}' for a in fer)})")


def conversions(spec: str, folds: list[dict]) -> None:
    """Each LiteRT conversion (CONVERT=...) against the Keras models, the same trained models and
    calibration scoring the same test photos: pooled and per fold, labels changed, ECE."""
    truth = [np.array(f["truth"], dtype=np.float64) for f in folds]
    y, keras = np.concatenate(truth), np.concatenate([np.array(f["scores"]) for f in folds])
    for quantization in folds[0].get("converted") or {}:
        per_fold = [np.array(f["converted"][quantization]) for f in folds]
        lite = np.concatenate(per_fold)
        deltas = [metrics_from_scores(t, q)["accuracy"]
                  - metrics_from_scores(t, np.array(f["scores"]))["accuracy"]
                  for t, q, f in zip(truth, per_fold, folds, strict=True)]
        k, q = figures(y, keras), figures(y, lite)
        print(f"## {spec}, LiteRT {quantization} against Keras")
        print(f"- accuracy {q['accuracy']:.4f} against {k['accuracy']:.4f} "
              f"({q['accuracy'] - k['accuracy']:+.4f}); per fold {', '.join(f'{d:+.4f}' for d in deltas)}; "
              f"ECE {q['ece']:.3f} against {k['ece']:.3f}; labels changed "
              f"{int(np.sum((keras >= 0.5) != (lite >= 0.5)))} of {len(y)}; largest P(sad) difference "
              f"{np.max(np.abs(keras - lite)):.4f}")


def main() -> None:
    saved = json.loads(Path(sys.argv[1]).read_text())
    for spec in sys.argv[2:] or list(saved):
        folds = saved[spec]
        conversions(spec, folds)
        for raw_key, how in (("raw", "colour"), ("grey_raw", "grey")):
            for shift in (False, True):
                report(f"{spec}, read in {how}, {'shifted' if shift else 'temperature only'}",
                       folds, raw_key, shift)


if __name__ == "__main__":
    main()
