"""Turning a photo into training data: a copy in DATA_DIR/<label>, never a move."""

from __future__ import annotations

import shutil
from pathlib import Path

from moodwatch.files import sha256_file, unique_destination
from moodwatch.images import load_image
from moodwatch.settings import Settings
from moodwatch.vocab import LABELS


def label_file(settings: Settings, src: Path, label: str) -> Path:
    """Copy src into the label's folder; relabelling moves the earlier copy to the new label."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}")
    load_image(src, settings.max_pixels)  # refuse what the trainer would quarantine
    digest = sha256_file(src)
    for other in LABELS:
        folder = settings.data_dir / other
        if not folder.is_dir():
            continue
        for existing in folder.iterdir():
            same_size = existing.is_file() and existing.stat().st_size == src.stat().st_size
            if same_size and sha256_file(existing) == digest:
                if other == label:
                    return existing
                dest = unique_destination(settings.data_dir / label, existing.name)
                shutil.move(existing, dest)
                return dest
    dest = unique_destination(settings.data_dir / label, src.name)
    shutil.copy2(src, dest)
    return dest
