"""Checks a settled file before it is queued; a failure is a reason a person understands."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from moodwatch.files import event_id_for, too_large
from moodwatch.images import ALLOWED_EXTENSIONS, ImageRejected, extension_allowed, inspect_image

__all__ = ["Checked", "check_arrival", "event_id_for"]


@dataclass
class Checked:
    path: str
    event_id: str
    sha256: str | None = None
    rejected: str | None = None  # the reason, when the file is refused


def check_arrival(path: str, inbox: Path, max_bytes: int, max_pixels: int) -> Checked | None:
    """Validate one file; None when it vanished before it could be looked at."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    eid = event_id_for(path, st)
    if stat.S_ISLNK(st.st_mode):
        return Checked(path, eid, rejected="symbolic link: links are not followed (drop the file itself)")
    real = Path(path).resolve()
    if not real.is_relative_to(inbox.resolve()):
        return Checked(path, eid, rejected="path leads outside the inbox through a linked folder")
    if not stat.S_ISREG(st.st_mode):
        return Checked(path, eid, rejected="not a regular file")
    if not extension_allowed(path):
        allowed = ", ".join(sorted(e.lstrip(".") for e in ALLOWED_EXTENSIONS))
        return Checked(path, eid, rejected=f"file type {Path(path).suffix or '(none)'!r} is not "
                       f"accepted (only {allowed})")
    if st.st_size == 0:
        return Checked(path, eid, rejected="empty file (0 bytes)")
    if st.st_size > max_bytes:
        return Checked(path, eid, rejected=too_large(st.st_size, max_bytes))
    try:
        # O_NOFOLLOW: a file swapped for a link after the check is refused, not followed.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Checked(path, eid, rejected=f"cannot read file: {exc.strerror or exc}")
    try:
        inspect_image(data, max_pixels)
    except ImageRejected as exc:
        return Checked(path, eid, rejected=exc.reason)
    return Checked(path, eid, sha256=hashlib.sha256(data).hexdigest())
