"""Reading untrusted image bytes: checks from the header (:func:`inspect_image`) and the decoder.

The trainer and the worker both prepare images with :func:`moodwatch.pipeline.prepare_path`,
which decodes here with :func:`decode_rgb`, so both see the same pixels: RGB order (OpenCV's
decoder asked for RGB), the same decoder, the same resize. :func:`load_image` is the whole-image path for
curation and the tests.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import BmpImagePlugin, Image, ImageFile, JpegImagePlugin, PngImagePlugin

from moodwatch.vocab import DEFAULT_MAX_PIXELS, IMAGE_SIZE

# One decode thread per call: callers parallelise across images, and OpenCV's own pool would
# fight with TensorFlow's for the same cores.
cv2.setNumThreads(1)


@dataclass(frozen=True)
class ImageFormat:
    """One accepted format: everything the watcher, the worker, the trainer and the web page
    need to know of it. Adding a format is one row in FORMATS (and its decoder in OpenCV)."""

    name: str  # the family name the code, the rows and the messages use: "jpeg"
    extensions: tuple[str, ...]  # file names it is accepted under, lower case with the dot
    signatures: tuple[bytes, ...]  # what its bytes start with
    pil_format: str  # Pillow's name for it (Image.format), checked against the signature
    header_reader: type[ImageFile.ImageFile]  # Pillow's own reader, used past Pillow's bomb guard
    media_type: str  # what the web page serves it as
    complete: Callable[[bytes], None]  # raises ImageRejected when the file is cut short (or worse)

    @property
    def title(self) -> str:
        return self.name.upper()


def _check_png_body(data: bytes) -> None:
    if b"IEND" not in data[-64:]:
        raise ImageRejected("truncated PNG (no IEND chunk)")


# In the order the messages list them. The JPEG check is looked up when called (it is below).
FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("jpeg", (".jpg", ".jpeg"), (b"\xff\xd8\xff",), "JPEG", JpegImagePlugin.JpegImageFile,
                "image/jpeg", lambda data: _check_jpeg_body(data)),
    ImageFormat("png", (".png",), (b"\x89PNG\r\n\x1a\n",), "PNG", PngImagePlugin.PngImageFile,
                "image/png", _check_png_body),
    ImageFormat("bmp", (".bmp",), (b"BM",), "BMP", BmpImagePlugin.BmpImageFile, "image/bmp",
                lambda data: None),  # a BMP has no end marker to look for
)
FORMAT_BY_NAME = {f.name: f for f in FORMATS}
ALLOWED_EXTENSIONS = frozenset(ext for f in FORMATS for ext in f.extensions)
SIGNATURE_BYTES = max(len(sig) for f in FORMATS for sig in f.signatures)  # enough to sniff any


def _listed(words: list[str], last: str) -> str:
    return f"{', '.join(words[:-1])} {last} {words[-1]}" if len(words) > 1 else words[0]


TYPE_NAMES = _listed([f.title for f in FORMATS], "or")  # "JPEG, PNG or BMP"
EXTENSION_NAMES = _listed([e.lstrip(".") for f in FORMATS for e in f.extensions], "or")  # jpg, ... or bmp
ACCEPTED_TYPES = "accepted types are " + ", ".join(f.title for f in FORMATS)  # "JPEG, PNG, BMP"

# Formats people often have under a .jpg name, so a refusal can say what the file really is.
_FOREIGN = (
    ("a WEBP image", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP"),
    ("a GIF image", lambda d: d[:6] in (b"GIF87a", b"GIF89a")),
    ("a TIFF image", lambda d: d[:4] in (b"II*\x00", b"MM\x00*")),
    ("a HEIC image", lambda d: d[4:8] == b"ftyp" and d[8:12] in (b"heic", b"heix", b"mif1", b"msf1")),
    ("an AVIF image", lambda d: d[4:8] == b"ftyp" and d[8:12] in (b"avif", b"avis")),
    ("a PDF document", lambda d: d[:5] == b"%PDF-"),
)
# Most scans a JPEG may have. Decoding a progressive JPEG makes one pass over the image's blocks
# per scan, so its work grows with scans x pixels, not with the file's size: 20,000 near-empty
# scans over 7000x7000 pixels fit in 1.2 MB and took about 3 minutes of CPU to decode. Encoders
# write about 10 (libjpeg's default progression: 10 for colour, 6 for grey; optimised ones a few
# dozen at most). The scan-count denial of service is known (Cure53's audit of libjpeg-turbo),
# and decoders for untrusted input limit scans (djpeg -maxscans, TurboJPEG's scan limit,
# nvImageCodec's default of 256). 100 leaves room for any encoder and bounds the slowest file
# the pixel and size limits allow to a few seconds of decoding (measured: 100 scans over 7000x7000
# pixels decode in 0.6 s near-empty, 1.7 s with data; the batch's time limit covers the rest).
MAX_JPEG_SCANS = 100
# The next marker in entropy-coded data: 0xFF followed by neither a stuffed zero, a restart
# marker (RST0-7, no segment), nor another 0xFF (a fill byte: the last 0xFF starts the marker).
# No "\xff+": that pattern searches 30 times slower, half a second for a 30 MB photo.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


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
    for fmt in FORMATS:
        if any(data.startswith(sig) for sig in fmt.signatures):
            return fmt.name
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
        raise ImageRejected(f"not a {TYPE_NAMES} image (its bytes have no image signature)")
    try:
        width, height, pil_format = _header(data, fmt)
    except Exception as exc:  # Pillow raises many types for garbage headers
        raise ImageRejected(f"unreadable {fmt.upper()} header ({exc.__class__.__name__})") from exc
    if FORMAT_BY_NAME[fmt].pil_format != pil_format:
        raise ImageRejected(f"corrupt {fmt.upper()} header")
    if width <= 0 or height <= 0:
        raise ImageRejected("image has no pixels")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image too large: {width}x{height} = {width * height:,} pixels "
            f"(limit {max_pixels:,})"
        )
    FORMAT_BY_NAME[fmt].complete(data)
    return ImageInfo(fmt, width, height)


def _header(data: bytes, fmt: str) -> tuple[int, int, str | None]:
    """Width, height and Pillow's format name, from the header only. Pillow's global bomb guard
    (Image.MAX_IMAGE_PIXELS) is left as it is: it is shared by every decode thread, and setting it
    from several at once could leave it switched off. Its warning, below its error, is expected
    here: our own limit decides. So does its error: past it (twice Image.MAX_IMAGE_PIXELS) the
    header is read again by the format's own reader, which applies no guard, and the refusal
    quotes our limit and the image's size, not Pillow's limit (nor refuses an image ours allows:
    OpenCV decodes it, not Pillow)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.size[0], img.size[1], img.format
        except Image.DecompressionBombError:
            with FORMAT_BY_NAME[fmt].header_reader(io.BytesIO(data)) as img:
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


def _jpeg_scan_count(data: bytes, first_scan: int, cap: int) -> int:
    """The scans (start-of-scan segments) from the first one to the end-of-image marker, counted
    up to cap. After each scan's header comes its entropy-coded data, which is no segment: there
    a 0xFF byte is stuffed (0xFF00) or starts a restart marker (0xFFD0-D7, no length), and the
    search for the next marker skips both. Between scans come whole segments (tables, comments),
    skipped by their length."""
    count, i = 0, first_scan
    while count < cap:
        marker = data[i + 1]
        if marker == 0xD9:
            break
        count += marker == 0xDA
        # SOI and TEM have no length; any other marker starts a segment with one (a length too
        # short for one still moves on: the search starts past the marker itself).
        end = i + 2 if marker in (0x01, 0xD8) else i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        found = _NEXT_MARKER.search(data, end)
        if found is None:
            break
        i = found.start()
    return count


def _check_jpeg_body(data: bytes) -> None:
    """Refuse a JPEG cut short, or one with more scans than any encoder writes (a scan bomb)."""
    scan = _jpeg_scan_start(data)
    if scan is None or not _jpeg_complete(data, scan):
        raise ImageRejected("truncated JPEG (no end-of-image marker)")
    # Counting stops a thousand times past the limit: the walk is a step per segment, and a
    # hostile file of 50 MB could hold millions of them.
    cap = MAX_JPEG_SCANS * 1000
    scans = _jpeg_scan_count(data, scan, cap + 1)
    if scans > MAX_JPEG_SCANS:
        count = f"more than {cap:,}" if scans > cap else f"{scans:,}"
        raise ImageRejected(f"JPEG with {count} scans (limit {MAX_JPEG_SCANS}): refused, decoding that "
                            "many can take minutes (a progressive JPEG has about 10)")


def _jpeg_complete(data: bytes, scan: int) -> bool:
    """An end-of-image marker after the image's own scan data begins (at offset scan). A marker
    anywhere is not enough: an EXIF thumbnail (a whole JPEG inside the APP1 segment, before the
    scan) carries its own, which made a camera JPEG cut short mid-scan look complete."""
    return data.rfind(b"\xff\xd9") > scan


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


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
               info: ImageInfo | None = None) -> np.ndarray:
    """Decode checked bytes to an RGB uint8 array (possibly reduced, never below IMAGE_SIZE).

    info: what inspect_image(data, max_pixels) said of these very bytes, where the caller has
    it already (the worker's admission inspected them): the checks are not run twice."""
    info = info or inspect_image(data, max_pixels)
    flag = _reduced_flag(info.width, info.height) if info.format == "jpeg" else cv2.IMREAD_COLOR
    # The decoder writes RGB itself (libjpeg-turbo's RGB output, PNG's own order): the same
    # pixels as decoding to BGR and swapping, checked on every photo of the data sets, without
    # a pass over the decoded image (0.25 ms of 3.8 for a web photo).
    rgb = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), (flag & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB)
    if rgb is None or rgb.size == 0:
        raise ImageRejected(f"corrupt {info.format.upper()} data (the decoder could not read it)")
    return rgb


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
