"""The one table of accepted image formats (moodwatch.images.FORMATS) and what is derived from it."""

from __future__ import annotations

import numpy as np
import pytest

from moodwatch.images import (
    ACCEPTED_TYPES,
    ALLOWED_EXTENSIONS,
    EXTENSION_NAMES,
    FORMATS,
    TYPE_NAMES,
    ImageRejected,
    inspect_image,
    sniff_format,
)
from tests.imagegen import encode
from trainer.cleaning import unusable_reason
from web.media import MEDIA_TYPES


def test_the_words_and_extensions_come_from_the_table():
    assert sorted(ALLOWED_EXTENSIONS) == [".bmp", ".jpeg", ".jpg", ".png"]
    assert TYPE_NAMES == "JPEG, PNG or BMP"
    assert ACCEPTED_TYPES == "accepted types are JPEG, PNG, BMP"
    assert EXTENSION_NAMES == "jpg, jpeg, png or bmp"
    assert MEDIA_TYPES == {"jpeg": "image/jpeg", "png": "image/png", "bmp": "image/bmp"}


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_each_format_is_sniffed_and_read_by_its_row(fmt):
    data = encode(np.full((20, 30, 3), 90, np.uint8), fmt.extensions[0])
    assert sniff_format(data) == fmt.name
    info = inspect_image(data)
    assert (info.format, info.width, info.height) == (fmt.name, 30, 20)


@pytest.mark.parametrize("ext, reason", [(".jpg", "truncated JPEG"), (".png", "truncated PNG")])
def test_a_file_cut_short_fails_its_formats_completeness_check(ext, reason):
    data = encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8), ext)
    with pytest.raises(ImageRejected, match=reason):
        inspect_image(data[: len(data) * 2 // 3])


def test_the_trainer_names_the_accepted_extensions(tmp_path):
    path = tmp_path / "a.gif"
    path.write_bytes(b"GIF89a")
    assert unusable_reason(path, 1_000_000) == \
        "file type '.gif' is not accepted: the extension must be jpg, jpeg, png or bmp"
