"""Images per LiteRT call: each served CNN of a version timed in calls of 1 to 32 images (one
thread, CPU time, best of three), and each call size's scores against those of calls of 32.

    .venv/bin/python benchmarks/lite_calls.py [--images DIR] [--version FOLDER]

The whole-image CNN reads the version's preprocessing of real photos (moodwatch.images.load_image);
the face CNNs read random crops (their cost does not depend on the pixels). What
moodwatch.litert.LITE_CALL_IMAGES is chosen from.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from moodwatch.faces import FACE_SIZE
from moodwatch.images import extension_allowed, load_image
from moodwatch.litert import DYNAMIC_INT8, FLOAT32, LiteModel, lite_name
from moodwatch.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1, 2, 4, 8, 16, 32)
N = 64


def per_image_ms(model: LiteModel, x: np.ndarray) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        for _ in range(3):
            model(x)
        best = min(best, (time.process_time() - t) / 3 / len(x) * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/datasets/web-happy-sad")
    parser.add_argument("--version", type=Path, default=None, help="default: the shipped version")
    args = parser.parse_args()
    folder = args.version or Registry(ROOT / "models").require_current().path
    photos = sorted(p for p in args.images.rglob("*") if p.is_file() and extension_allowed(p.name))[:N]
    inputs = {"model.keras": np.stack([load_image(p) for p in photos]),
              "face.keras": np.random.default_rng(0).integers(0, 256, (N, FACE_SIZE, FACE_SIZE, 1), np.uint8)}
    inputs["face-closeup.keras"] = inputs["face.keras"]
    print(f"{folder.name}; {len(photos)} photos from {args.images}; one thread, CPU ms an image")
    heads = " | ".join(f"calls of {s}" for s in SIZES)
    print(f"| CNN | {heads} | largest difference from calls of 32 |")
    print("|---|" + "---|" * (len(SIZES) + 1))
    for keras_name, x in inputs.items():
        for quantization in (DYNAMIC_INT8, FLOAT32):
            path = folder / lite_name(keras_name, quantization)
            if not path.is_file():
                continue
            models = {s: LiteModel(path, num_threads=1, call_images=s) for s in SIZES}
            reference = models[32](x)
            times = [per_image_ms(models[s], x) for s in SIZES]
            diff = max(float(np.abs(models[s](x) - reference).max()) for s in SIZES)
            cells = " | ".join(f"{t:.3f}" for t in times)
            print(f"| {path.name} | {cells} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
