"""Cross-validate architectures on a labelled folder and print the figures.

    python benchmarks/crossval.py ../shared/datasets/web-happy-sad seed default
    D=../shared/datasets
    python benchmarks/crossval.py $D/web-happy-sad,$D/people-happy-sad-extra default+faces

Several folders, comma-separated, are pooled (near-twins grouped across them) and saved per folder.
FER_VAL=DIR (happy/ and sad/ 48x48 crops) scores each fold's fine-tuned face CNN on them.

FACE_ALTERNATIVES=A.keras,B.keras: other face models, each fine-tuned beside the same fold's
whole-image CNN in place of FACE_MODEL's and scored on the same photos (paired, fold by fold).

DEDUPE=1 keeps near-duplicate photos (perceptual hash within a few bits) in one fold.
SCORES_OUT=F.json also saves every out-of-fold score, truth and scoring regime, and each fold's
raw logits on its validation and test photos (benchmarks/calibration_rules.py reads them).
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from moodwatch import faces  # noqa: E402
from moodwatch.modelio import is_sad  # noqa: E402
from trainer.crossval import cross_validate, summarise  # noqa: E402
from trainer.evaluation import metrics_from_scores  # noqa: E402
from trainer.promotion import mcnemar_p  # noqa: E402
from trainer.report import calibration_table, expected_calibration_error, roc_auc  # noqa: E402


def main() -> None:
    data = [Path(d) for d in sys.argv[1].split(",")]
    archs = sys.argv[2:] or ["seed", "default"]
    k = int(os.environ.get("FOLDS", "5"))
    face = Path(os.environ["FACE_MODEL"]) if os.environ.get("FACE_MODEL") else None
    weight = float(os.environ.get("FACE_WEIGHT", "0.5"))
    face_epochs = int(os.environ.get("FACE_EPOCHS", "3"))
    # Detection variants: FACE_FALLBACK=back adds the 256 px model where the short-range one
    # finds nothing; FACE_ALIGN=0 keeps crops unrotated.
    faces.FALLBACK = os.environ.get("FACE_FALLBACK") or None
    faces.ALIGN = os.environ.get("FACE_ALIGN", "1") != "0"
    print(f"face detection: {faces.detection_settings()}", flush=True)
    # CONVERT=float32,dynamic-int8,...: each fold's models also converted to LiteRT and scored
    # on the same test photos (trainer.convert.QUANTIZATIONS).
    conversions = tuple(q for q in os.environ.get("CONVERT", "").split(",") if q)
    alternatives = tuple(Path(a) for a in os.environ.get("FACE_ALTERNATIVES", "").split(",") if a)
    for spec in archs:
        # "default+faces" adds the face model (FACE_MODEL) to the default architecture.
        arch, _, extra = spec.partition("+")
        results = cross_validate(data, arch, k=k, face_base=face if extra == "faces" else None,
                                 face_weight=weight, face_epochs=face_epochs,
                                 face_head_only=os.environ.get("FACE_TUNE") == "head",
                                 near_duplicates=os.environ.get("DEDUPE") == "1",
                                 fer_crops=fer_crops(os.environ.get("FER_VAL")),
                                 conversions=conversions, face_alternatives=alternatives,
                                 on_fold=lambda r, spec=spec: print(
                                     f"{spec} fold {r.fold} done: acc {r.metrics['accuracy']:.3f} "
                                     f"epochs {r.epochs} FER {r.metrics['fer_accuracy']}"
                                     f"{paired_line(r.metrics, conversions)}", flush=True))
        arch = spec
        for r in results:
            m = r.metrics
            print(f"{arch} fold {r.fold}: acc {m['accuracy']:.3f} F1 {m['f1']:.3f} "
                  f"epochs {r.epochs} ({r.epoch_s:.2f}s/epoch) FER {m['fer_accuracy']}", flush=True)
        s = summarise(results)
        print(f"{arch}: accuracy {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f}  "
              f"F1 {s['f1_mean']:.3f} ± {s['f1_std']:.3f}  ROC AUC {s['roc_auc_mean']:.3f}  "
              f"{s['epoch_s']:.2f}s/epoch", flush=True)
        y = np.array([t for r in results for t in r.metrics["truth"]])
        sc = np.array([v for r in results for v in r.metrics["scores"]])
        print(f"{arch}: pooled out-of-fold calibration (ECE {expected_calibration_error(y, sc):.3f}):")
        print_calibration(y, sc)
        regimes = np.array([g for r in results for g in r.metrics["regimes"]])
        for regime in sorted(set(regimes)):
            sel = regimes == regime
            m = metrics_from_scores(y[sel], sc[sel])
            auc = roc_auc(y[sel], sc[sel])  # nan when the regime holds one class only
            ece = expected_calibration_error(y[sel], sc[sel])
            print(f"{arch}: regime {regime}: {sel.sum()} photos ({sel.mean():.0%}), accuracy "
                  f"{m['accuracy']:.3f}, F1 {m['f1']:.3f}, ROC AUC {auc:.3f}, ECE {ece:.3f}", flush=True)
            print_calibration(y[sel], sc[sel])
        for q in conversions:
            lite = np.array([v for r in results for v in r.metrics["converted"][q]])
            print_conversion(spec, q, y, sc, lite)
        for alt in alternatives:
            print_paired(spec, str(alt), results, conversions)
        if os.environ.get("SCORES_OUT"):  # the out-of-fold scores, to recompute any figure later
            out = Path(os.environ["SCORES_OUT"])
            saved = json.loads(out.read_text()) if out.exists() else {}
            saved[spec] = [{"fold": r.fold, "truth": r.metrics["truth"], "scores": r.metrics["scores"],
                            "regimes": r.metrics["regimes"], "raw": r.metrics["raw"],
                            **{key: r.metrics[key] for key in ("paths", "sources", "black_and_white",
                                                               "grey_raw", "fer_accuracy",
                                                               "converted", "alternatives")}}
                           for r in results]
            out.write_text(json.dumps(saved))


def paired_line(metrics: dict, conversions: tuple[str, ...]) -> str:
    """A fold's alternative face models beside its own (the served conversion where there is one)."""
    parts = []
    for alt, a in metrics.get("alternatives", {}).items():
        served = [f"{q} {a['converted'][q]['accuracy']:.3f}" for q in conversions]
        parts.append(f"; {Path(alt).name}: acc {a['accuracy']:.3f}"
                     + (f" ({', '.join(served)})" if served else ""))
    return "".join(parts)


def print_paired(spec: str, alt: str, results: list, conversions: tuple[str, ...]) -> None:
    """An alternative face model against the fold's own, pooled over the folds, on the same photos
    and the same whole-image CNNs: accuracy, and the photos only one of them labels right
    (the promotion's exact McNemar test on those, two-sided)."""
    y = np.array([t for r in results for t in r.metrics["truth"]])
    for q in (None, *conversions):
        own = np.array([v for r in results
                        for v in (r.metrics["converted"][q] if q else r.metrics["scores"])])
        other = np.array([v for r in results
                          for v in (r.metrics["alternatives"][alt]["converted"][q]["scores"] if q
                                    else r.metrics["alternatives"][alt]["scores"])])
        right_own, right_other = is_sad(own) == (y == 1), is_sad(other) == (y == 1)
        only_own, only_other = int(np.sum(right_own & ~right_other)), int(np.sum(right_other & ~right_own))
        # Two-sided: either face model may be the better one; the promotion test is one-sided.
        p = min(1.0, 2 * mcnemar_p(max(only_own, only_other), min(only_own, only_other)))
        print(f"{spec}: face model {Path(alt).name} ({q or 'keras'}): accuracy {right_other.mean():.4f} "
              f"against {right_own.mean():.4f} ({right_other.mean() - right_own.mean():+.4f}); right only "
              f"with it {only_other}, only without {only_own} (McNemar p {p:.3f})", flush=True)


def print_conversion(spec: str, quantization: str, y: np.ndarray, keras_scores: np.ndarray,
                     lite_scores: np.ndarray) -> None:
    """A conversion's pooled out-of-fold figures beside the Keras models' on the same photos."""
    k, q = metrics_from_scores(y, keras_scores), metrics_from_scores(y, lite_scores)
    changed = int(np.sum((keras_scores >= 0.5) != (lite_scores >= 0.5)))
    print(f"{spec}: LiteRT {quantization}: accuracy {q['accuracy']:.4f} against Keras {k['accuracy']:.4f} "
          f"({q['accuracy'] - k['accuracy']:+.4f}), ECE {expected_calibration_error(y, lite_scores):.3f} "
          f"against {expected_calibration_error(y, keras_scores):.3f}, {changed} labels changed, largest "
          f"P(sad) difference {np.max(np.abs(lite_scores - keras_scores)):.4f}", flush=True)


def fer_crops(folder: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    if not folder:
        return None
    x, y = [], []
    for label, value in (("happy", 0), ("sad", 1)):
        for p in sorted((Path(folder) / label).iterdir()):
            crop = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            if crop is not None:
                x.append(cv2.resize(crop, (48, 48))[..., None])
                y.append(value)
    return np.stack(x), np.array(y)


def print_calibration(y: np.ndarray, scores: np.ndarray) -> None:
    for row in calibration_table(y, scores):
        if row["n"]:
            print(f"    {row['band']}  n {row['n']:>3}  mean conf {row['mean_confidence']:.3f}  "
                  f"accuracy {row['accuracy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
