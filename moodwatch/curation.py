"""Turning a photo into training data: a copy in DATA_DIR/<label>, never a move."""

from __future__ import annotations

import shutil
from pathlib import Path

from moodwatch.admission import Admitted, Limits, admit
from moodwatch.files import sha256_file, unique_destination, write_atomic
from moodwatch.images import ImageRejected, preprocess_bytes
from moodwatch.settings import Settings
from moodwatch.vocab import LABELS

VANISHED = "the file vanished while it was checked"


def training_photo(src: Path, limits: Limits) -> Admitted:
    """A photo fit to train on: let in as every outside file is (moodwatch.admission, in the same
    words), then decoded whole, since a header that reads well can still front pixels the decoder
    cannot read. ImageRejected with the reason otherwise. The trainer's cleaning and `label` (the
    CLI's and the review page's) both ask this one question."""
    result = admit(str(src), None, limits)
    if result is None:
        raise ImageRejected(VANISHED)
    if not isinstance(result, Admitted):
        raise ImageRejected(result.reason)
    preprocess_bytes(result.data, limits.max_pixels)
    return result


def label_file(settings: Settings, src: Path, label: str) -> Path:
    """Copy src into the label's folder; relabelling moves the earlier copy to the new label.
    What is copied is the bytes that were checked (read once), not whatever the path holds later."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}")
    photo = training_photo(src, Limits(settings.max_file_bytes, settings.max_pixels))
    digest = photo.sha256
    for other in LABELS:
        folder = settings.data_dir / other
        if not folder.is_dir():
            continue
        for existing in folder.iterdir():
            same_size = existing.is_file() and existing.stat().st_size == len(photo.data)
            if same_size and sha256_file(existing) == digest:
                if other == label:
                    return existing
                dest = unique_destination(settings.data_dir / label, existing.name)
                shutil.move(existing, dest)
                return dest
    dest = unique_destination(settings.data_dir / label, src.name)
    write_atomic(dest, photo.data)
    return dest
