"""Reading untrusted image bytes: checks from the header (:func:`inspect_image`) and the decoder.

The trainer and the worker both prepare images with :func:`moodwatch.pipeline.prepare_path`,
which decodes here with :func:`decode_rgb`, so both see the same pixels: RGB order (OpenCV
decodes BGR), the same decoder, the same resize. :func:`load_image` is the whole-image path for
curation and the tests.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from moodwatch.settings import ALLOWED_EXTENSIONS, DEFAULT_MAX_PIXELS, IMAGE_SIZE

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
        width, height, pil_format = _header(data)
    except Image.DecompressionBombError as exc:
        # Past Pillow's own guard (twice Image.MAX_IMAGE_PIXELS), far past any sane limit of ours.
        raise ImageRejected(f"image too large: {exc} (limit {max_pixels:,} pixels)") from exc
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
    if fmt == "jpeg" and not _jpeg_complete(data):
        raise ImageRejected("truncated JPEG (no end-of-image marker)")
    if fmt == "png" and b"IEND" not in data[-64:]:
        raise ImageRejected("truncated PNG (no IEND chunk)")
    return ImageInfo(fmt, width, height)


def _header(data: bytes) -> tuple[int, int, str | None]:
    """Width, height and Pillow's format name, from the header only. Pillow's global bomb guard
    (Image.MAX_IMAGE_PIXELS) is left as it is: it is shared by every decode thread, and setting it
    from several at once could leave it switched off. Its warning, below its error, is expected
    here: our own limit decides."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            return img.size[0], img.size[1], img.format


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset of the first start-of-scan marker, walking the segments from the start marker;
    None if the segment chain is broken before one."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xDA:
            return i
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _jpeg_complete(data: bytes) -> bool:
    """An end-of-image marker after the image's own scan data begins. A marker anywhere is not
    enough: an EXIF thumbnail (a whole JPEG inside the APP1 segment, before the scan) carries its
    own, which made a camera JPEG cut short mid-scan look complete."""
    scan = _jpeg_scan_start(data)
    return scan is not None and data.rfind(b"\xff\xd9") > scan


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
