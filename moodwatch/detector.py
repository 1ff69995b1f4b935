"""BlazeFace face detection: MediaPipe's models run by LiteRT, decoded in NumPy.

The models (``models/detector/*.tflite``, Apache-2.0, provenance beside them) output, for every
anchor of a fixed SSD grid, a face score and a box with six keypoints relative to that anchor.
This module builds the anchors, decodes the boxes, and merges overlapping detections with
MediaPipe's weighted non-maximum suppression, all vectorised.

A photo is letterboxed (scaled to fit, padded to a square) into the model's input. Where that
finds nothing in a wide or tall photo, it is cut into overlapping square tiles along its long
side, so the faces of a panorama are not shrunk to a few pixels; detections from the tiles are
merged by the same suppression.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SOURCE_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "detector"
RAW_SCORE_LIMIT = 80.0  # MediaPipe clips at 100; 80 keeps float32 sigmoid finite
SUPPRESSION_IOU = 0.3  # MediaPipe's min_suppression_threshold for faces
TILE_ASPECT = 1.5  # a photo wider (or taller) than this is also scanned in square tiles
TILE_OVERLAP = 0.25
# A strip a few pixels high holds no face, and would cut into thousands of tiny tiles (a hostile
# 1 x 50,000 px image: 50,000 model calls); a very long panorama gets evenly spread tiles instead.
MIN_TILE_SIDE = 24
MAX_TILES = 16


class DetectorLoadError(RuntimeError):
    """The face detector's model file is missing or not a usable LiteRT model."""


def default_model_dir() -> Path:
    """MOODWATCH_DETECTOR_DIR, else the files shipped in models/detector beside the code."""
    from moodwatch.settings import get_settings

    return get_settings().detector_dir or SOURCE_MODEL_DIR


@dataclass(frozen=True)
class DetectorSpec:
    file: str
    size: int  # square input side
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]  # per stride group, as MediaPipe's SSD anchor calculator
    min_score: float = 0.5


# From MediaPipe's face_detection_{short,full}_range_common.pbtxt and face_detection_back.
SPECS = {
    "short": DetectorSpec("face_detection_short_range.tflite", 128, (8, 16), (2, 6)),
    "full": DetectorSpec("face_detection_full_range.tflite", 192, (4,), (1,), min_score=0.6),
    "back": DetectorSpec("face_detection_back.tflite", 256, (16, 32), (2, 6)),
}


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x, y, w, h in the image's pixels
    score: float
    keypoints: np.ndarray  # (6, 2) pixels: right eye, left eye, nose tip, mouth, right ear, left ear

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def eye_angle(self) -> float:
        """Degrees to rotate the face by so the eyes are level."""
        (x0, y0), (x1, y1) = self.keypoints[0], self.keypoints[1]
        return float(np.degrees(np.arctan2(y1 - y0, x1 - x0)))


def ssd_anchors(spec: DetectorSpec) -> np.ndarray:
    """Anchor centres (n, 2) in [0, 1], in the order the model's outputs use."""
    grids = []
    for stride, per_cell in zip(spec.strides, spec.anchors_per_cell, strict=True):
        cells = spec.size // stride
        centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        xs, ys = np.meshgrid(centres, centres)
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        grids.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(grids)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, size: int,
           min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (n, 4) as x0, y0, x1, y1, keypoints (n, 6, 2) and scores (n,), in [0, 1] of the input."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.reshape(-1), -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)))
    keep = scores >= min_score
    points = raw_boxes.reshape(len(anchors), -1, 2)[keep] / size
    anchors = anchors[keep]
    centre, half = points[:, 0] + anchors, points[:, 1] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = points[:, 2:] + anchors[:, None, :]
    valid = (half > 0).all(axis=1)
    return boxes[valid], keypoints[valid], scores[keep][valid]


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x0, y0, x1, y1 box with many."""
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 threshold: float = SUPPRESSION_IOU) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted suppression: each cluster of overlapping detections becomes one,
    its box and keypoints the score-weighted mean of the cluster, its score the best one's."""
    order = np.argsort(-scores, kind="stable")
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    out = []
    while len(scores):
        cluster = iou(boxes[0], boxes) > threshold
        cluster[0] = True
        w = scores[cluster][:, None]
        merged_box = (boxes[cluster] * w).sum(0) / w.sum()
        merged_kp = (keypoints[cluster] * w[:, :, None]).sum(0) / w.sum()
        out.append((merged_box, merged_kp, float(scores[0])))
        boxes, keypoints, scores = boxes[~cluster], keypoints[~cluster], scores[~cluster]
    return out


@dataclass(frozen=True)
class View:
    """A square region of the photo fed to the model: where it lies, and how it was scaled."""

    x: int
    y: int
    side: int  # the square's side in photo pixels (the photo part may be smaller: padding)


def tiles_of(width: int, height: int) -> list[View]:
    """Overlapping squares along the long side of a long, thin photo (none for other photos)."""
    long_side, short_side = max(width, height), min(width, height)
    if long_side <= TILE_ASPECT * short_side or short_side < MIN_TILE_SIDE:
        return []
    step = max(1, int(short_side * (1 - TILE_OVERLAP)))
    count = min(MAX_TILES, -(-(long_side - short_side) // step) + 1)
    starts = dict.fromkeys(round(i * (long_side - short_side) / (count - 1)) for i in range(count))
    return [View(s, 0, short_side) if width >= height else View(0, s, short_side) for s in starts]


def whole_view(rgb: np.ndarray) -> View:
    """The whole photo as one view (the first the detector reads)."""
    return View(0, 0, max(rgb.shape[:2]))


def letterbox(rgb: np.ndarray, view: View, size: int) -> tuple[np.ndarray, int, int, float]:
    """The model's input for one view: the view scaled to fit size x size, centred, padded, in
    [-1, 1] (as MediaPipe's ImageToTensorCalculator makes it); and where it lies in the square
    (left, top) and its scale, to map detections back to photo pixels."""
    part = rgb[view.y : view.y + view.side, view.x : view.x + view.side]
    scale = size / view.side
    h, w = max(1, round(part.shape[0] * scale)), max(1, round(part.shape[1] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(part, (w, h), interpolation=interp)
    top, left = (size - h) // 2, (size - w) // 2
    tensor = np.zeros((1, size, size, 3), np.float32)
    tensor[0, top : top + h, left : left + w] = small.astype(np.float32) / 127.5 - 1.0
    return tensor, left, top, scale


class BlazeFace:
    """One LiteRT interpreter; not thread-safe (use :func:`detector_for_thread`)."""

    def __init__(self, kind: str = "short", model_dir: Path | None = None):
        if kind not in SPECS:
            raise DetectorLoadError(f"unknown face detector {kind!r} (one of {', '.join(SPECS)})")
        self.spec = SPECS[kind]
        path = Path(model_dir or default_model_dir()) / self.spec.file
        try:
            from ai_edge_litert.interpreter import Interpreter

            self._interpreter = Interpreter(model_path=str(path), num_threads=1)
            self._interpreter.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError for missing or corrupt files
            raise DetectorLoadError(f"cannot load face detector model {path}: {exc}") from exc
        inputs = self._interpreter.get_input_details()
        outputs = sorted(self._interpreter.get_output_details(), key=lambda d: -int(d["shape"][-1]))
        expected = (1, self.spec.size, self.spec.size, 3)
        if tuple(inputs[0]["shape"]) != expected or len(outputs) != 2:
            raise DetectorLoadError(f"face detector model {path} has input {tuple(inputs[0]['shape'])}, "
                                    f"expected {expected}")
        self._input = inputs[0]["index"]
        self._boxes, self._scores = outputs[0]["index"], outputs[1]["index"]
        self.anchors = ssd_anchors(self.spec)

    def _run(self, rgb: np.ndarray, view: View) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detections in one view, mapped to photo pixels."""
        size = self.spec.size
        tensor, left, top, scale = letterbox(rgb, view, size)
        self._interpreter.set_tensor(self._input, tensor)
        self._interpreter.invoke()
        boxes, kps, scores = decode(self._interpreter.get_tensor(self._boxes)[0],
                                    self._interpreter.get_tensor(self._scores)[0], self.anchors, size,
                                    self.spec.min_score)
        offset = np.array([left, top], np.float32) / size
        to_px = np.array([view.x, view.y], np.float32)
        boxes = ((boxes.reshape(-1, 2, 2) - offset) * size / scale + to_px).reshape(-1, 4)
        kps = (kps - offset) * size / scale + to_px
        return boxes, kps, scores

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Every face found in an RGB uint8 photo, the most confident first.

        The whole photo first; only where that finds nothing, the tiles of a long photo (its
        faces were too small once letterboxed): a third of the cost of always tiling, and
        nearly every face the tiles would add.
        """
        height, width = rgb.shape[:2]
        found = [self._run(rgb, whole_view(rgb))]
        if not len(found[0][2]):
            found += [self._run(rgb, v) for v in tiles_of(width, height)]
        boxes = np.concatenate([f[0] for f in found])
        kps = np.concatenate([f[1] for f in found])
        scores = np.concatenate([f[2] for f in found])
        faces = []
        for box, kp, score in weighted_nms(boxes, kps, scores):
            x0, y0 = max(0.0, box[0]), max(0.0, box[1])
            x1, y1 = min(float(width), box[2]), min(float(height), box[3])
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                faces.append(Face((float(x0), float(y0), float(x1 - x0), float(y1 - y0)), score, kp))
        return faces


_local = threading.local()


def detector_for_thread(kind: str = "short", model_dir: Path | None = None) -> BlazeFace:
    """A detector for the calling thread: LiteRT interpreters must not be shared between threads."""
    key = (kind, str(model_dir or default_model_dir()))
    cache = _local.__dict__.setdefault("detectors", {})
    if key not in cache:
        cache[key] = BlazeFace(kind, model_dir)
    return cache[key]
