"""Face CNNs side by side: what each costs a crop on this CPU and how well it reads real faces.

    .venv/bin/python benchmarks/face_cnn_compare.py FACE.keras [FACE.keras ...]
        [--photos DIR[,DIR]] [--fer DIR] [--limit N]

For each face CNN (a `.keras` file as trainer.face_model builds it, never fine-tuned):
- its multiply-adds a 48x48 crop, and its CPU ms a crop on LiteRT (one thread, calls of
  moodwatch.litert.LITE_CALL_IMAGES), float32 and dynamic-range int8, converted as a version's
  CNNs are (trainer.convert.to_tflite);
- its accuracy and ROC AUC on the FER-2013 validation split (never trained on);
- on real photos (default: web-happy-sad and people-happy-sad-extra), the faces the served
  preprocessing finds (trainer.dataset.prepare_items, BlazeFace, the same crops as training
  and service), scored as the pipeline scores them (moodwatch.pipeline.area_weighted), against
  each photo's label: the face CNN alone, before the per-version fine-tuning and the mix with the
  whole-image CNN. A proxy for choosing which face CNN is worth a cross-validation
  (benchmarks/crossval.py with FACE_MODEL=...), which is what decides.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from benchmarks.throughput import cpu_description  # noqa: E402
from moodwatch.faces import FACE_SIZE, FaceInputs  # noqa: E402
from moodwatch.litert import DYNAMIC_INT8, FLOAT32, LiteModel  # noqa: E402
from moodwatch.modelio import load_model  # noqa: E402
from moodwatch.pipeline import area_weighted, logit, sigmoid  # noqa: E402
from moodwatch.vocab import DEFAULT_MAX_PIXELS  # noqa: E402
from trainer.convert import to_tflite  # noqa: E402
from trainer.crossval import list_items  # noqa: E402
from trainer.dataset import labels_of, prepare_items  # noqa: E402
from trainer.evaluation import metrics_from_scores  # noqa: E402
from trainer.face_model import load_face_folder  # noqa: E402
from trainer.report import roc_auc  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def photo_faces(folders: list[Path], limit: int | None,
                ) -> tuple[list[FaceInputs], np.ndarray]:
    """The faces of every photo with at least one found (close-ups left out), and its label: the
    photos a cross-validation would read (trainer.crossval.list_items), prepared as it does."""
    items = list_items(folders)[:limit] if limit else list_items(folders)
    prepared = prepare_items(items, DEFAULT_MAX_PIXELS, faces=True)
    kept = [(p.faces, y) for p, y in zip(prepared, labels_of(items), strict=True)
            if p.faces is not None and not p.faces.close_up and len(p.faces.crops)]
    print(f"{len(items)} photos, {len(kept)} with faces, "
          f"{sum(len(f.crops) for f, _ in kept)} faces", flush=True)
    return [f for f, _ in kept], np.array([y for _, y in kept])


def multiply_adds(model) -> int:
    """Multiply-adds of one crop through the model's convolutions and dense layers."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c_out * kh * kw * layer.input.shape[-1]
        elif kind == "Dense":
            total += layer.input.shape[-1] * layer.units
    return int(total)


def lite_ms_per_crop(model, quantization: str, crops: np.ndarray) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "face.tflite"
        path.write_bytes(to_tflite(model, (FACE_SIZE, FACE_SIZE, 1), quantization))
        lite = LiteModel(path, num_threads=1, quantization=quantization)
        lite(crops[:8])  # warm up
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            lite(crops)
            best = min(best, (time.process_time() - t) / len(crops) * 1000)
    return best


def accuracy_auc(y: np.ndarray, p_sad: np.ndarray) -> tuple[float, float]:
    return metrics_from_scores(y, p_sad)["accuracy"], roc_auc(y.astype(int), p_sad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--photos",
                        default=f"{DATASETS / 'web-happy-sad'},{DATASETS / 'people-happy-sad-extra'}")
    parser.add_argument("--fer", type=Path, default=DATASETS / "fer2013-happy-sad")
    parser.add_argument("--limit", type=int, help="first N photos only (a quick look)")
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}", flush=True)
    faces, y = photo_faces([Path(d) for d in args.photos.split(",")], args.limit)
    crops = np.concatenate([f.crops for f in faces])
    fer_x, fer_y = load_face_folder(args.fer / "validation")
    print("| face CNN | multiply-adds a crop | LiteRT float32, CPU ms a crop | LiteRT dynamic-int8 | "
          "FER validation accuracy / ROC AUC | real photos' faces, accuracy / ROC AUC |")
    print("|---|---|---|---|---|---|")
    for path in args.models:
        model = load_model(path)
        flat = iter(logit(model.predict(crops, batch_size=256, verbose=0).reshape(-1)))
        per_photo = [area_weighted(np.array([next(flat) for _ in f.boxes]), f.boxes) for f in faces]
        photo_acc, photo_auc = accuracy_auc(y, sigmoid(np.array(per_photo)))
        fer_acc, fer_auc = accuracy_auc(fer_y, model.predict(fer_x, batch_size=256, verbose=0).reshape(-1))
        f32, i8 = (lite_ms_per_crop(model, q, crops[:128]) for q in (FLOAT32, DYNAMIC_INT8))
        print(f"| {path.name} | {multiply_adds(model) / 1e6:.1f} M | {f32:.2f} | {i8:.2f} | "
              f"{fer_acc:.3f} / {fer_auc:.3f} (n {len(fer_y)}) | {photo_acc:.3f} / {photo_auc:.3f} "
              f"(n {len(y)}) |", flush=True)


if __name__ == "__main__":
    main()
