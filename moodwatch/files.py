"""Moving files without ever overwriting or deleting one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


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
