"""Face detection (BlazeFace, :mod:`moodwatch.detector`) and the face-crop preprocessing.

Like :func:`moodwatch.images.decode_rgb` and :func:`moodwatch.images.resize` for whole images,
:func:`face_inputs` is the one function that turns a photo into face-model inputs, in training
and in service alike.

What a photo gives:
- no face found: no crops (the whole-image model scores it alone);
- one to MAX_FACES faces: one 48x48 grey crop each, largest first, each rotated so the eyes are
  level (BlazeFace's eye keypoints);
- more faces: the MAX_FACES largest (the main subjects; background faces are small);
- a photo no larger than CLOSE_UP_SIDE: the photo itself is the crop (it is a face crop already).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from moodwatch.detector import SPECS, Face, detector_for_thread, letterbox, whole_view

FACE_SIZE = 48  # the face model's input, as the FER-2013 crops it learns from
CLOSE_UP_SIDE = 64  # a photo this small is taken as a face crop itself (FER crops are 48 px)
MAX_FACES = 4
MIN_FACE_SIDE = 12  # px in the decoded photo: smaller detections are too blurred to read
# BlazeFace's box runs from the brows to the chin; the face model learned from crops with some
# forehead and a margin (FER-2013, and the Haar boxes it was fine-tuned on): widen and lift.
CROP_SCALE = 1.25
CROP_LIFT = 0.13  # of the box height
# Detection: the short-range model on the whole photo (and on tiles when it is long and thin);
# FALLBACK (the 256 px "back camera" model, four times the cost) only where it found nothing.
PRIMARY = "short"
FALLBACK: str | None = None
ALIGN = True


@dataclass
class FaceInputs:
    crops: np.ndarray  # (k, 48, 48, 1) uint8, largest face first
    boxes: list[tuple[int, int, int, int]]  # x, y, w, h in the decoded image's pixels
    close_up: bool  # no face found, but the photo is a close-up: the whole photo is the crop
    size: tuple[int, int] = (0, 0)  # width, height of the image the boxes refer to

    def relative_boxes(self) -> list[list[float]]:
        """Boxes as fractions of the image's width and height (independent of decode scale)."""
        w, h = self.size
        return [[round(x / w, 4), round(y / h, 4), round(bw / w, 4), round(bh / h, 4)]
                for x, y, bw, bh in self.boxes] if w and h else []


def detection_settings() -> dict[str, object]:
    """What decides the crops, recorded with each model version."""
    return {"detector": "blazeface", "primary": PRIMARY, "fallback": FALLBACK, "align": ALIGN,
            "max_faces": MAX_FACES, "crop_scale": CROP_SCALE, "crop_lift": CROP_LIFT}


def check_detector() -> None:
    """Load the detector models once; raises DetectorLoadError with the file and the cause."""
    detector_for_thread(PRIMARY)
    if FALLBACK is not None:
        detector_for_thread(FALLBACK)


def detect_faces(rgb: np.ndarray) -> list[Face]:
    """The faces the crops come from: the largest MAX_FACES, largest first."""
    faces = detector_for_thread(PRIMARY).detect(rgb)
    if not faces and FALLBACK is not None:
        faces = detector_for_thread(FALLBACK).detect(rgb)
    faces = [f for f in faces if min(f.box[2], f.box[3]) >= MIN_FACE_SIDE]
    return sorted(faces, key=lambda f: f.area, reverse=True)[:MAX_FACES]


def centre_crop(gray: np.ndarray) -> np.ndarray:
    """The photo's centre square at FACE_SIZE (a close-up is a face crop already)."""
    h, w = gray.shape
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    square = gray[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > FACE_SIZE else cv2.INTER_LINEAR
    return cv2.resize(square, (FACE_SIZE, FACE_SIZE), interpolation=interp)[..., None]


def face_crop(gray: np.ndarray, face: Face, align: bool | None = None) -> np.ndarray:
    """A FACE_SIZE square around the face, rotated so the eyes are level (ALIGN by default)."""
    x, y, w, h = face.box
    side = CROP_SCALE * max(w, h)
    cx, cy = x + w / 2, y + h / 2 - CROP_LIFT * h
    angle = face.eye_angle() if (ALIGN if align is None else align) else 0.0
    # Shrink first with an area filter (a warp alone would alias a large face), then rotate
    # and cut in one affine warp; the border repeats edge pixels for faces at the photo's edge.
    scale = FACE_SIZE / side
    if scale < 1:
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cx, cy, side = cx * scale, cy * scale, FACE_SIZE
        gray = small
    m = cv2.getRotationMatrix2D((cx, cy), angle, FACE_SIZE / side)
    m[:, 2] += (FACE_SIZE / 2 - cx, FACE_SIZE / 2 - cy)
    out = cv2.warpAffine(gray, m, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    return out[..., None]


def before_detection(rgb: np.ndarray) -> None:
    """What face_inputs does to a photo before the detector's CNN runs, and nothing after: the
    grey image, then the close-up crop or the detector's input for the whole photo. The decode
    floor of `moodwatch bench` times it: the most a pipeline with faces could do without CNNs."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if max(gray.shape) <= CLOSE_UP_SIDE:
        centre_crop(gray)
    else:
        letterbox(rgb, whole_view(rgb), SPECS[PRIMARY].size)


def face_inputs(rgb: np.ndarray, detect: bool = True) -> FaceInputs:
    """Face crops for a decoded RGB photo: every detected face, or the photo itself if a close-up."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    size = (gray.shape[1], gray.shape[0])
    if not detect or max(gray.shape) <= CLOSE_UP_SIDE:
        # A thumbnail-sized photo is taken as a face crop itself, as the FER crops the face
        # model learned from are: detection at that size mostly misses or cuts the face.
        return FaceInputs(centre_crop(gray)[None], [], True, size)
    faces = detect_faces(rgb)
    if not faces:
        return FaceInputs(np.zeros((0, FACE_SIZE, FACE_SIZE, 1), np.uint8), [], False, size)
    boxes = [tuple(int(round(v)) for v in f.box) for f in faces]
    return FaceInputs(np.stack([face_crop(gray, f) for f in faces]), boxes, False, size)
