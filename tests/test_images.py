import numpy as np
import pytest

from moodwatch.images import (
    ImageRejected,
    extension_allowed,
    inspect_image,
    load_image,
    preprocess_bytes,
)
from tests.imagegen import encode, face_like, huge_png_header, with_exif_thumbnail, write_image


def test_extension_any_case():
    for name in ["a.jpg", "a.JPG", "a.Jpeg", "b.png", "c.BMP", "d.jpeg"]:
        assert extension_allowed(name)
    for name in ["a.gif", "a.jpg.txt", "noext", "a.webp", "a.jpg~", "a.part"]:
        assert not extension_allowed(name)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp"])
def test_loads_each_format_as_rgb_256(tmp_path, ext):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0] = 250  # pure red in RGB order
    path = write_image(tmp_path / f"red{ext}", rgb)
    out = load_image(path)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    # RGB, not OpenCV's BGR: the red channel is the first one.
    assert out[..., 0].mean() > 240 and out[..., 2].mean() < 10


def test_png_named_jpg_is_accepted(tmp_path):
    path = tmp_path / "really_png.jpg"
    path.write_bytes(encode(face_like("happy", 1)))
    assert load_image(path).shape == (256, 256, 3)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, I am a text file\n" * 10, "not a JPEG, PNG or BMP"),
        (b"GIF89a" + b"\x00" * 100, "a GIF image; accepted types are JPEG, PNG, BMP"),
        (b"%PDF-1.4\n" + b"0" * 100, "a PDF document; accepted types are JPEG, PNG, BMP"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "PNG"),
    ],
)
def test_rejects_bad_bytes(data, reason):
    with pytest.raises(ImageRejected, match=reason):
        preprocess_bytes(data)


def test_rejects_truncated_jpeg():
    data = encode(face_like("sad", 3, 200), ".jpg")
    with pytest.raises(ImageRejected, match="truncated JPEG"):
        preprocess_bytes(data[: len(data) // 2])


def test_rejects_truncated_jpeg_with_exif_thumbnail():
    """The thumbnail's own end marker sits near the start: a camera JPEG cut short mid-scan must
    still be refused (a search for the last marker anywhere found the thumbnail's)."""
    thumb = encode(face_like("happy", 1, 32), ".jpg")
    data = with_exif_thumbnail(encode(face_like("sad", 3, 200), ".jpg"), thumb)
    assert inspect_image(data).format == "jpeg"  # the whole file is fine
    with pytest.raises(ImageRejected, match="truncated JPEG"):
        inspect_image(data[: len(data) * 2 // 3])


def test_inspect_leaves_pillow_bomb_guard_alone(monkeypatch):
    """Pillow's global limit is shared by every thread: changing it from four decode threads at
    once can leave it switched off. inspect_image must never touch it."""
    from PIL import Image

    seen = []
    real_open = Image.open

    def spying_open(*args, **kwargs):
        seen.append(Image.MAX_IMAGE_PIXELS)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", spying_open)
    before = Image.MAX_IMAGE_PIXELS
    inspect_image(encode(face_like("sad", 3, 64), ".jpg"))
    assert seen == [before] and before is not None


def test_huge_header_refused_by_our_limit_even_past_pillows():
    """Past Pillow's own error threshold the refusal is still ours, with the size."""
    with pytest.raises(ImageRejected, match="image too large"):
        inspect_image(huge_png_header(20000, 20000))


def test_rejects_truncated_png():
    data = encode(face_like("sad", 3, 200), ".png")
    with pytest.raises(ImageRejected, match="truncated PNG"):
        preprocess_bytes(data[: len(data) // 2])


def test_decompression_bomb_refused_from_header():
    data = huge_png_header(100_000, 100_000)
    with pytest.raises(ImageRejected, match="too large"):
        inspect_image(data, max_pixels=50_000_000)


def test_large_jpeg_reduced_decode_matches_full_decode_closely(tmp_path):
    # A big photo is decoded at reduced scale for speed; the result must stay close to a
    # full-resolution decode followed by the same resize.
    import cv2

    rng = np.random.default_rng(0)
    big = cv2.resize(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), (2400, 1800),
                     interpolation=cv2.INTER_CUBIC)
    data = encode(big, ".jpg")
    fast = preprocess_bytes(data).astype(np.float32)
    full = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)
    slow = cv2.resize(full, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(fast - slow).mean() < 3.0


@pytest.mark.parametrize("fmt", ["WEBP", "TIFF", "GIF"])
def test_a_known_foreign_format_named_jpg_is_named(tmp_path, fmt):
    import io

    from PIL import Image

    from watcher.validation import check_arrival

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, fmt)
    path = tmp_path / "photo.jpg"
    path.write_bytes(buf.getvalue())
    checked = check_arrival(str(path), tmp_path, 10**7, 10**7)
    assert checked.rejected == f"a {fmt} image; accepted types are JPEG, PNG, BMP"


def test_decoding_with_the_callers_inspection_skips_a_second_one(monkeypatch):
    """The worker's admission inspected the bytes already: decode_rgb takes that ImageInfo and
    gives the same pixels without inspecting them again."""
    import moodwatch.images as images

    data = encode(face_like("happy", 3), ".jpg")
    info = images.inspect_image(data)
    expected = images.decode_rgb(data)
    calls = []
    monkeypatch.setattr(images, "inspect_image", lambda *a, **k: calls.append(a) or info)
    assert np.array_equal(images.decode_rgb(data, info=info), expected)
    assert calls == []
    images.decode_rgb(data)  # without one, the bytes are inspected as ever
    assert len(calls) == 1
