"""Per-image time of each serving stage, Keras against LiteRT, on one core (issue 24).

    .venv/bin/python benchmarks/stage_times.py [--images DIR] [--count N] [--version FOLDER]
        [--accuracy-images DIR] [--accuracy-count N] [--serving-only]

The same photos go through each stage in turn, timed over all of them: read, decode, resize to
256 px, the face detector's input (letterbox), face detection (BlazeFace on that input, boxes,
tiles where the whole photo showed none), face crops, the face CNN (every crop of 32 photos in
one call, as Pipeline.raw calls it) and the whole-image CNN (batches of 32, as the worker).
Each stage's CPU time is printed beside its wall time: on a busy machine the CPU time is the
stage's cost, the wall time also holds the other processes' turns. --serving-only: the CNNs as
served (Pipeline.load, in float32 and in dynamic-int8), no comparison of runtimes and no
accuracy table. Otherwise the CNN stages run on the version's Keras models, on its LiteRT
conversions (1 and 2 XNNPACK threads) and on quantized conversions (float16, dynamic-range
int8: the whole-image CNN alone, then all three), the pipelines taking turns; then each
pipeline's accuracy and largest score difference from Keras on --accuracy-images (held-back
photos: the shipped version was trained on web-happy-sad).
TensorFlow gets one intra-op thread, as a worker process on 2 cores does (TF_NUM_INTRAOP_THREADS).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from itertools import cycle, islice  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.throughput import cpu_description  # noqa: E402
from moodwatch.detector import SPECS, letterbox, whole_view  # noqa: E402
from moodwatch.faces import (  # noqa: E402
    CLOSE_UP_SIDE,
    PRIMARY,
    FaceInputs,
    centre_crop,
    detect_faces,
    face_crop,
)
from moodwatch.images import DEFAULT_MAX_PIXELS, decode_rgb, resize  # noqa: E402
from moodwatch.litert import DYNAMIC_INT8, FLOAT32, LiteModel, lite_name  # noqa: E402
from moodwatch.modelio import is_sad, load_model  # noqa: E402
from moodwatch.pipeline import CLOSE_UP_MODEL_FILE, FACE_MODEL_FILE, Pipeline, Prepared  # noqa: E402
from moodwatch.registry import Registry  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BATCH = 32


def labelled(folder: Path) -> list[tuple[Path, int]]:
    return sorted((p, int(label == "sad")) for label in ("happy", "sad")
                  for p in (folder / label).rglob("*") if p.is_file())


def timed(fn: Callable, items: list) -> tuple[list, tuple[float, float]]:
    """fn over every item, and the seconds per item: wall clock, and this process's CPU time."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = [fn(x) for x in items]
    return out, ((time.perf_counter() - t0) / len(items), (time.process_time() - c0) / len(items))


def crops_of(rgb: np.ndarray, faces: list) -> FaceInputs:
    """face_inputs' crop half, given its detections (the benchmark times the two apart)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    size = (gray.shape[1], gray.shape[0])
    if max(gray.shape) <= CLOSE_UP_SIDE:
        return FaceInputs(centre_crop(gray)[None], [], True, size)
    if not faces:
        return FaceInputs(np.zeros((0, 48, 48, 1), np.uint8), [], False, size)
    boxes = [tuple(int(round(v)) for v in f.box) for f in faces]
    return FaceInputs(np.stack([face_crop(gray, f) for f in faces]), boxes, False, size)


def prepare_stages(paths: list[Path]) -> tuple[list[Prepared], dict[str, tuple[float, float]]]:
    """The photos prepared stage by stage, with each stage's seconds per photo (wall, CPU)."""
    blobs, t_read = timed(Path.read_bytes, paths)
    rgbs, t_decode = timed(lambda b: decode_rgb(b, DEFAULT_MAX_PIXELS), blobs)
    images, t_resize = timed(resize, rgbs)
    small = [max(r.shape[:2]) <= CLOSE_UP_SIDE for r in rgbs]
    indices = list(range(len(rgbs)))
    size = SPECS[PRIMARY].size
    _, t_input = timed(lambda i: None if small[i] else letterbox(rgbs[i], whole_view(rgbs[i]), size), indices)
    faces, t_detect = timed(lambda i: [] if small[i] else detect_faces(rgbs[i]), indices)
    inputs, t_crop = timed(lambda i: crops_of(rgbs[i], faces[i]), indices)
    prepared = [Prepared(img, f) for img, f in zip(images, inputs, strict=True)]
    # detect_faces makes its own input: the detector's own share is the difference.
    t_model = (t_detect[0] - t_input[0], t_detect[1] - t_input[1])
    return prepared, {"read": t_read, "decode": t_decode, "resize to 256": t_resize,
                      "detector input (letterbox to 128)": t_input,
                      "detect faces (BlazeFace, boxes, tiles)": t_model, "crop faces": t_crop}


def cnn_times(pipelines: dict[str, Pipeline], prepared: list[Prepared],
              repeats: int = 3) -> dict[str, dict[str, float]]:
    """Seconds per photo of the face CNN and the whole-image CNN of each pipeline, the best of
    `repeats` passes, the pipelines taking turns within each pass: on a shared machine whose
    load comes and goes, each is timed in the same spells as the others."""
    images = np.stack([p.image for p in prepared])
    chunks = [prepared[i : i + BATCH] for i in range(0, len(prepared), BATCH)]
    crops = [np.concatenate([p.faces.crops for p in c if p.faces is not None and len(p.faces.crops)]
                            or [np.zeros((0, 48, 48, 1), np.uint8)]) for c in chunks]
    best = {name: {"face CNN": float("inf"), "whole CNN": float("inf")} for name in pipelines}
    for pipeline in pipelines.values():  # trace / allocate before timing
        pipeline.whole_scores(images[:BATCH])
        if pipeline.uses_faces:
            pipeline.face_scores(crops[0])
    for _ in range(repeats):
        for name, pipeline in pipelines.items():
            t0 = time.perf_counter()
            if pipeline.uses_faces:
                for c in crops:
                    pipeline.face_scores(c)
            t1 = time.perf_counter()
            pipeline.whole_scores(images)
            t2 = time.perf_counter()
            b = best[name]
            b["face CNN"], b["whole CNN"] = min(b["face CNN"], t1 - t0), min(b["whole CNN"], t2 - t1)
    return {name: {k: v / len(prepared) for k, v in b.items()} for name, b in best.items()}


def lite_pipeline(folder: Path, threads: int, keras_pipe: Pipeline) -> Pipeline:
    """The version's LiteRT conversions with `threads` XNNPACK threads each."""
    def lite(name: str) -> LiteModel | None:
        path = folder / lite_name(name)
        return LiteModel(path, threads) if path.is_file() else None

    whole = lite("model.keras")
    if whole is None:
        sys.exit(f"error: {folder} has no LiteRT conversion (python -m trainer.convert {folder})")
    return Pipeline(whole, lite(FACE_MODEL_FILE), lite(CLOSE_UP_MODEL_FILE), keras_pipe.combination, BATCH)


def quantized(folder: Path, quantization: str, out: Path) -> dict[str, LiteModel]:
    """The version's CNNs converted with `quantization`, as LiteModels (1 thread)."""
    from trainer.convert import INPUT_SHAPES, to_tflite

    models = {}
    for name, shape in INPUT_SHAPES.items():
        if (folder / name).is_file():
            path = out / f"{quantization}-{name}.tflite"
            path.write_bytes(to_tflite(load_model(folder / name), shape, quantization))
            models[name] = LiteModel(path, num_threads=1)
    return models


def accuracy(pipeline: Pipeline, prepared: list[Prepared], y: np.ndarray) -> tuple[float, np.ndarray]:
    scores = pipeline.scores(prepared)
    return float(np.mean(is_sad(scores) == y.astype(bool))), scores


def serving_table(folder: Path, prepared: list[Prepared], stages: dict[str, tuple[float, float]]) -> None:
    """Every stage as a worker process runs it, the CNNs as Pipeline.load serves them in each
    MOODWATCH_CNN_PRECISION (float32, dynamic-int8), timed in the same run; "all" per precision."""
    chunks = [prepared[i : i + BATCH] for i in range(0, len(prepared), BATCH)]
    crops = [np.concatenate([p.faces.crops for p in c if p.faces is not None and len(p.faces.crops)]
                            or [np.zeros((0, 48, 48, 1), np.uint8)]) for c in chunks]
    images = [np.stack([p.image for p in c]) for c in chunks]
    shared = dict(stages)
    totals = {}
    for precision in (FLOAT32, DYNAMIC_INT8):
        pipeline = Pipeline.load(folder, BATCH, precision=precision)
        runs = {"face CNN": (pipeline.face_scores, crops), "whole CNN": (pipeline.whole_scores, images)}
        mine = []
        for name, (fn, batches) in runs.items():
            if name == "face CNN" and not pipeline.uses_faces:
                continue
            for b in batches:  # every batch size once before timing (LiteRT allocates per size)
                fn(b)
            _, (wall, cpu) = timed(fn, batches)
            mine.append(key := f"{name} ({pipeline.runtime} {pipeline.precision})")
            stages[key] = (wall * len(batches) / len(prepared), cpu * len(batches) / len(prepared))
        totals[precision] = [stages[k] for k in [*shared, *mine]]
    print("\n| stage (one process, one thread) | ms per photo | CPU ms per photo |\n|---|---|---|")
    for stage, (w, c) in stages.items():
        print(f"| {stage} | {w * 1000:.2f} | {c * 1000:.2f} |")
    for precision, rows in totals.items():
        print(f"| all, CNNs in {precision} | {sum(w for w, _ in rows) * 1000:.2f} | "
              f"{sum(c for _, c in rows) * 1000:.2f} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/datasets/web-happy-sad")
    parser.add_argument("--count", type=int, default=96, help="photos timed (a multiple of 32: no padding)")
    parser.add_argument("--version", type=Path, default=None, help="version folder (default: shipped)")
    parser.add_argument("--accuracy-images", type=Path, default=None,
                        help="labelled folder for the accuracy table (default: --images); held-back "
                             "photos: the shipped version was trained on web-happy-sad")
    parser.add_argument("--accuracy-count", type=int, default=None,
                        help="photos of it, spread evenly over the sorted list (default: all)")
    parser.add_argument("--serving-only", action="store_true",
                        help="the CNNs as served only: no runtime comparison, no accuracy table")
    args = parser.parse_args()
    folder = args.version or Registry(ROOT / "models").require_current().path
    files = labelled(args.images)
    paths = list(islice(cycle([p for p, _ in files]), args.count))
    print(f"CPU: {cpu_description()}; version {folder.name}; {len(paths)} photos "
          f"from {args.images}; nice {os.nice(0)}; load average {os.getloadavg()[0]:.2f}")

    prepared, stages = prepare_stages(paths)
    if args.serving_only:
        serving_table(folder, prepared, stages)
        return
    print("\n| stage (one process, one thread) | ms per photo | CPU ms per photo |\n|---|---|---|")
    for stage, (wall, cpu) in stages.items():
        print(f"| {stage} | {wall * 1000:.2f} | {cpu * 1000:.2f} |")
    stages = {k: v[0] for k, v in stages.items()}

    held = labelled(args.accuracy_images or args.images)
    if args.accuracy_count and args.accuracy_count < len(held):
        held = [held[i] for i in np.linspace(0, len(held) - 1, args.accuracy_count).astype(int)]
    y = np.array([label for _, label in held])
    held_prepared = [Prepared(resize(r := decode_rgb(p.read_bytes(), DEFAULT_MAX_PIXELS)),
                              crops_of(r, [] if max(r.shape[:2]) <= CLOSE_UP_SIDE else detect_faces(r)))
                     for p, _ in held]

    keras_pipe = Pipeline.load(folder, BATCH, runtime="keras")
    combination = keras_pipe.combination
    pipelines = {"Keras (TensorFlow, 1 thread)": keras_pipe,
                 "LiteRT float32, 1 thread": lite_pipeline(folder, 1, keras_pipe),
                 "LiteRT float32, 2 threads": lite_pipeline(folder, 2, keras_pipe)}
    f32 = pipelines["LiteRT float32, 1 thread"]
    with tempfile.TemporaryDirectory() as tmp:
        for quantization in ("float16", "dynamic-int8"):
            q = quantized(folder, quantization, Path(tmp))
            pipelines[f"LiteRT {quantization} whole CNN"] = Pipeline(
                q["model.keras"], f32.face, f32.close_up, combination, BATCH)
            pipelines[f"LiteRT {quantization} all CNNs"] = Pipeline(
                q["model.keras"], q.get(FACE_MODEL_FILE), q.get(CLOSE_UP_MODEL_FILE), combination, BATCH)
    times = cnn_times(pipelines, prepared)
    _, base_scores = accuracy(keras_pipe, held_prepared, y)
    print(f"\naccuracy: {len(held)} labelled photos from {args.accuracy_images or args.images}")
    print("\n| CNNs on | face CNN ms/photo | whole CNN ms/photo | all stages ms/photo | accuracy "
          "| largest P(sad) difference from Keras |\n|---|---|---|---|---|---|")
    for name, pipeline in pipelines.items():
        acc, scores = accuracy(pipeline, held_prepared, y)
        t = times[name]
        total = sum(stages.values()) + t["face CNN"] + t["whole CNN"]
        diff = "-" if pipeline is keras_pipe else f"{np.abs(scores - base_scores).max():.2g}"
        print(f"| {name} | {t['face CNN'] * 1000:.2f} | {t['whole CNN'] * 1000:.2f} | {total * 1000:.2f} "
              f"| {acc:.4f} | {diff} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
