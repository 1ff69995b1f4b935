"""Reading untrusted image files, and the one preprocessing function train and serve share.

Every image the trainer learns from and every image the worker classifies goes through
:func:`load_image`, so both see the same pixels: RGB order (OpenCV decodes BGR), the same
decoder, the same resize to ``IMAGE_SIZE x IMAGE_SIZE``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from moodwatch.settings import ALLOWED_EXTENSIONS, IMAGE_SIZE

# One decode thread per call: callers parallelise across images, and OpenCV's own pool would
# fight with TensorFlow's for the same cores.
cv2.setNumThreads(1)

_MAGIC = {
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "bmp": (b"BM",),
}
_PIL_FORMATS = {"JPEG": "jpeg", "PNG": "png", "BMP": "bmp"}
# Formats people often have under a .jpg name, so a refusal can say what the file really is.
_FOREIGN = (
    ("a WEBP image", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP"),
    ("a GIF image", lambda d: d[:6] in (b"GIF87a", b"GIF89a")),
    ("a TIFF image", lambda d: d[:4] in (b"II*\x00", b"MM\x00*")),
    ("a HEIC image", lambda d: d[4:8] == b"ftyp" and d[8:12] in (b"heic", b"heix", b"mif1", b"msf1")),
    ("an AVIF image", lambda d: d[4:8] == b"ftyp" and d[8:12] in (b"avif", b"avis")),
    ("a PDF document", lambda d: d[:5] == b"%PDF-"),
)
ACCEPTED_TYPES = "accepted types are JPEG, PNG, BMP"
DEFAULT_MAX_PIXELS = 50_000_000


class ImageRejected(ValueError):
    """The bytes are not an image we accept; ``reason`` says why in words a person understands."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    format: str  # jpeg, png or bmp
    width: int
    height: int


def extension_allowed(name: str) -> bool:
    return Path(name).suffix.lower() in ALLOWED_EXTENSIONS


def sniff_format(data: bytes) -> str | None:
    """The image family the bytes belong to, from their signature, or None."""
    for fmt, signatures in _MAGIC.items():
        if any(data.startswith(sig) for sig in signatures):
            return fmt
    return None


def inspect_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Check untrusted bytes without decoding the pixels; raise ImageRejected with the reason.

    Reads only the header for the dimensions, so a decompression bomb is refused before any
    memory is spent on it, and looks for the end marker so a truncated file is refused
    rather than half-decoded into grey.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        what = next((name for name, matches in _FOREIGN if matches(data)), None)
        if what:
            raise ImageRejected(f"{what}; {ACCEPTED_TYPES}")
        raise ImageRejected("not a JPEG, PNG or BMP image (its bytes have no image signature)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # we apply our own limit below
            try:
                with Image.open(io.BytesIO(data)) as img:
                    width, height = img.size
                    pil_format = img.format
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
    except Exception as exc:  # Pillow raises many types for garbage headers
        raise ImageRejected(f"unreadable {fmt.upper()} header ({exc.__class__.__name__})") from exc
    if _PIL_FORMATS.get(pil_format or "") != fmt:
        raise ImageRejected(f"corrupt {fmt.upper()} header")
    if width <= 0 or height <= 0:
        raise ImageRejected("image has no pixels")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image too large: {width}x{height} = {width * height:,} pixels "
            f"(limit {max_pixels:,})"
        )
    if fmt == "jpeg" and data.rfind(b"\xff\xd9") < 4:
        raise ImageRejected("truncated JPEG (no end-of-image marker)")
    if fmt == "png" and b"IEND" not in data[-64:]:
        raise ImageRejected("truncated PNG (no IEND chunk)")
    return ImageInfo(fmt, width, height)


def _reduced_flag(width: int, height: int) -> int:
    """Largest JPEG DCT-domain reduction that keeps both sides at least IMAGE_SIZE.

    Decoding a 4000 px photo at 1/8 scale costs a fraction of a full decode and loses
    nothing we keep, since the result is resized to IMAGE_SIZE anyway.
    """
    for factor, flag in (
        (8, cv2.IMREAD_REDUCED_COLOR_8),
        (4, cv2.IMREAD_REDUCED_COLOR_4),
        (2, cv2.IMREAD_REDUCED_COLOR_2),
    ):
        if width // factor >= IMAGE_SIZE and height // factor >= IMAGE_SIZE:
            return flag
    return cv2.IMREAD_COLOR


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode checked bytes to an RGB uint8 array (possibly reduced, never below IMAGE_SIZE)."""
    info = inspect_image(data, max_pixels)
    flag = _reduced_flag(info.width, info.height) if info.format == "jpeg" else cv2.IMREAD_COLOR
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if bgr is None or bgr.size == 0:
        raise ImageRejected(f"corrupt {info.format.upper()} data (the decoder could not read it)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize(rgb: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Squash to size x size (the seed design's whole-image resize); area filter when shrinking."""
    h, w = rgb.shape[:2]
    interpolation = cv2.INTER_AREA if (w >= size and h >= size) else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interpolation)


def preprocess_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The one preprocessing function: bytes -> uint8 RGB array of shape (256, 256, 3)."""
    return resize(decode_rgb(data, max_pixels))


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a file and preprocess it; the entry point both trainer and worker use."""
    return preprocess_bytes(Path(path).read_bytes(), max_pixels)
