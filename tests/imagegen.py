"""Small generated images for tests: nothing here comes from the shared data sets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

EXT_FLAGS = {".jpg": [cv2.IMWRITE_JPEG_QUALITY, 92], ".jpeg": [cv2.IMWRITE_JPEG_QUALITY, 92],
             ".png": [], ".bmp": []}


def face_like(kind: str, seed: int, size: int = 96) -> np.ndarray:
    """An RGB picture a tiny CNN can tell apart: a yellow 'smile' or a blue 'frown', with noise."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    centre = (size // 2 + int(rng.integers(-6, 7)), size // 2 + int(rng.integers(-6, 7)))
    if kind == "happy":
        cv2.circle(img, centre, size // 3, (240, 220, 40), -1)
        cv2.ellipse(img, centre, (size // 6, size // 8), 0, 0, 180, (30, 30, 30), 3)
    else:
        cv2.circle(img, centre, size // 3, (40, 60, 200), -1)
        cv2.ellipse(img, (centre[0], centre[1] + size // 6), (size // 6, size // 8), 0, 180, 360,
                    (230, 230, 230), 3)
    # A grey block placed by the seed: without it two seeds' pictures are often mirror images or
    # shifted copies of each other, which the near-duplicate grouping (trainer.dedupe) rightly
    # puts in one group, leaving too few distinct pictures to split.
    block = np.random.default_rng(seed + 7919)
    w, h = size // 4, size // 3
    x, y = int(block.integers(0, size - w)), int(block.integers(0, size - h))
    img[y : y + h, x : x + w] = int(block.integers(90, 140))
    return img


def write_image(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB array in the format the extension names (case-insensitive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    ok, buf = cv2.imencode(ext if ext != ".jpeg" else ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           EXT_FLAGS.get(ext, []))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def encode(rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def make_curated(root: Path, per_class: int = 12, size: int = 96, start: int = 0) -> Path:
    """root/happy and root/sad with per_class generated images each, mixed formats."""
    exts = [".jpg", ".png", ".bmp", ".JPEG"]
    for label in ("happy", "sad"):
        for i in range(start, start + per_class):
            seed = i * 2 + (label == "sad")
            write_image(root / label / f"{label}_{i}{exts[i % len(exts)]}", face_like(label, seed, size))
    return root


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG file that declares huge dimensions (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def with_exif_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """A camera-style JPEG: an APP1 (EXIF) segment carrying a whole JPEG thumbnail, with its own
    end-of-image marker, right after the start marker."""
    tiff = b"II*\x00\x08\x00\x00\x00" + b"\x00\x00" + b"\x00\x00\x00\x00"  # an empty IFD0
    payload = b"Exif\x00\x00" + tiff + thumbnail
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]
