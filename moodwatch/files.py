"""Moving files without ever overwriting or deleting one."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from moodwatch.settings import Settings


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (photos can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unique_destination(folder: Path, name: str) -> Path:
    """A path in folder named `name`, with a numeric suffix if that name is taken."""
    folder.mkdir(parents=True, exist_ok=True)
    candidate = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 1
    while candidate.exists() or candidate.is_symlink():
        candidate = folder / f"{stem}-{n}{suffix}"
        n += 1
    return candidate


def move_no_clobber(src: Path, folder: Path) -> Path:
    """Move src into folder under a free name; a symlink is moved itself, its target untouched."""
    dest = unique_destination(folder, src.name)
    shutil.move(os.fspath(src), os.fspath(dest))
    return dest


def outcome_folder(row: dict[str, Any], settings: Settings) -> Path | None:
    if row["status"] == "classified" and settings.move_processed and row.get("label"):
        return settings.processed_dir / row["label"]
    if row["status"] == "rejected" and settings.move_rejected:
        return settings.rejected_dir
    return None


def move_outcome(row: dict[str, Any], settings: Settings) -> Path | None:
    """Move a recorded file from the inbox to its outcome folder; returns where it went.

    Only files inside the inbox are moved (``submit`` of a file elsewhere leaves it be). A
    symbolic link is moved as a link: its target is never read nor moved.
    """
    folder = outcome_folder(row, settings)
    src = Path(row["path"])
    if folder is None or not os.path.lexists(src):
        return None
    inbox = settings.inbox_dir.resolve()
    if not src.parent.resolve().is_relative_to(inbox):
        return None
    try:
        return move_no_clobber(src, folder)
    except OSError:
        return None


def move_outcomes(rows: list[dict[str, Any]], settings: Settings) -> dict[str, str]:
    """Move each recorded file to its outcome folder; returns event id -> where it went."""
    moved = {}
    for row in rows:
        dest = move_outcome(row, settings)
        if dest is not None:
            moved[row["event_id"]] = str(dest)
    return moved
