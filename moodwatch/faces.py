"""Face detection (OpenCV's bundled Haar cascade) and the face-crop preprocessing.

Like :func:`moodwatch.images.load_image` for whole images, :func:`face_inputs` is the one
function that turns a photo into face-model inputs, in training and in service alike.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

FACE_SIZE = 48  # the face model's input, as the FER-2013 crops it learns from
DETECT_SIDE = 320  # long side the detector sees: speed against small faces
CLOSE_UP_SIDE = 64  # a photo this small is taken as a face crop itself (FER crops are 48 px)
MAX_FACES = 4
_local = threading.local()


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


def _cascade() -> cv2.CascadeClassifier:
    # CascadeClassifier is not safe to share between threads: one per decode thread.
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if cascade.empty():
            raise RuntimeError("OpenCV's Haar face cascade is missing (opencv-python-headless<5)")
        _local.cascade = cascade
    return cascade


def detect_faces(gray: np.ndarray) -> list[tuple[int, int, int, int]]:
    h, w = gray.shape
    scale = min(1.0, DETECT_SIDE / max(h, w))
    small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else gray
    small = cv2.equalizeHist(small)
    found = _cascade().detectMultiScale(small, scaleFactor=1.15, minNeighbors=5, minSize=(24, 24))
    boxes = [tuple(int(round(v / scale)) for v in box) for box in found]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)[:MAX_FACES]


def crop(gray: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """A square crop around the box (a little margin, like FER's crops), or the whole centre."""
    h, w = gray.shape
    if box is None:
        side = min(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
    else:
        x, y, bw, bh = box
        side = int(max(bw, bh) * 1.1)
        x0 = max(0, min(w - side, x + bw // 2 - side // 2))
        y0 = max(0, min(h - side, y + bh // 2 - side // 2))
        side = min(side, w - x0, h - y0)
    face = gray[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > FACE_SIZE else cv2.INTER_LINEAR
    return cv2.resize(face, (FACE_SIZE, FACE_SIZE), interpolation=interp)[..., None]


def face_inputs(rgb: np.ndarray, detect: bool = True) -> FaceInputs:
    """Face crops for a decoded RGB photo: every detected face, or the photo itself if a close-up."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    size = (gray.shape[1], gray.shape[0])
    if not detect or max(gray.shape) <= CLOSE_UP_SIDE:
        # A thumbnail-sized photo is taken as a face crop itself, as the FER crops the face
        # model learned from are: detection at that size mostly misses or cuts the face.
        return FaceInputs(crop(gray, None)[None], [], True, size)
    boxes = detect_faces(gray)
    if boxes:
        return FaceInputs(np.stack([crop(gray, b) for b in boxes]), boxes, False, size)
    return FaceInputs(np.zeros((0, FACE_SIZE, FACE_SIZE, 1), np.uint8), [], False, size)
