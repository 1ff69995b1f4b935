"""Moving files without ever overwriting or deleting one."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from moodwatch.settings import Settings

# Characters that must not reach a database column or a log line as they are: control
# characters (NUL, newline: log forging) and lone surrogates, which is how Python carries the
# bytes of a file name that are not UTF-8 (os.fsdecode's "surrogateescape").
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # an escaped raw byte: show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """Text that is safe to store and to show: raw bytes of a name that is not UTF-8, and control
    characters, become ``\\xNN``. An ordinary name comes back unchanged."""
    return text if text.isprintable() else _UNSAFE.sub(_escape, text)


def raw_bytes(path: str) -> bytes:
    """The bytes a path stands for on disk (the inverse of os.fsdecode)."""
    try:
        return os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return path.encode("utf-8", "surrogatepass")


def event_id_for(path: str, st: os.stat_result) -> str:
    """Identifies one arrival of one file: the same file seen again (rescan, restart) gets the
    same id, so it is never recorded twice; a new file at the same path gets a new id.

    Built from the path's bytes, so any name the filesystem allows has one (a UTF-8 name gives
    the same id as ever)."""
    key = raw_bytes(os.path.abspath(path)) + \
        f"|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}".encode()
    return hashlib.sha256(key).hexdigest()[:40]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (photos can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unique_destination(folder: Path, name: str) -> Path:
    """A path in folder named `name`, with a numeric suffix if that name is taken.

    The name is made printable first: a file whose name is not UTF-8 gets a name that a row can
    hold exactly (its raw name stays recoverable from the row's ``path_bytes``)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = printable(name)
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
