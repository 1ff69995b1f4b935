"""Admitting a file that arrived from outside: the one path by which the watcher, `submit` and the
trainer's cleaning decide whether a file is taken, and the one safe read by which the watcher and
the worker read it again. Each refusal is worded here, once, so a row, a log line and the
trainer's quarantine say the same thing of the same file.

Nothing about what the path names is trusted between two looks at it: the checks on the path's
lstat only decide what is worth opening, and what is read is judged by the open file itself
(fstat, its real path), so a link, a FIFO or a linked folder swapped in meanwhile is refused,
never followed, and never hangs the reader.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from moodwatch.files import UNTRUSTED_OPEN, event_id_for, located_inside
from moodwatch.images import EXTENSION_NAMES, ImageInfo, ImageRejected, extension_allowed, inspect_image
from moodwatch.vocab import DEFAULT_MAX_PIXELS

# MOODWATCH_MAX_FILE_BYTES's default, for callers with no settings at hand (the trainer's helpers).
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

LINK = "symbolic link: links are not followed (drop the file itself)"
NOT_REGULAR = "not a regular file"
OUTSIDE = "path leads outside the inbox through a linked folder"


def too_large(size: int, limit: int, *, at_least: bool = False) -> str:
    """The refusal of a file over MOODWATCH_MAX_FILE_BYTES, in the same words wherever it is met
    (the watcher's check, the worker's read, bytes received over the broker). `at_least`: the
    file held more than the limit when read, whatever its size said."""
    told = f"more than {limit:,}" if at_least else f"{size:,}"
    return f"file too large: {told} bytes (limit {limit:,})"


def not_accepted(name: str) -> str:
    return (f"file type {Path(name).suffix or '(none)'!r} is not accepted: the extension must be "
            f"{EXTENSION_NAMES}")


def cannot_read(exc: OSError) -> str:
    return f"cannot read file: {exc.strerror or exc}"


@dataclass(frozen=True)
class Limits:
    """What a file may be. No flag turns a check off: every caller of `admit` wants them all (the
    trainer decodes the pixels afterwards as well, which a header cannot vouch for)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Admitted:
    path: str
    event_id: str  # of the arrival the path's lstat saw (see event_id_for)
    data: bytes  # read once: what is hashed is what is classified
    sha256: str
    image: ImageInfo


@dataclass(frozen=True)
class Refused:
    path: str
    event_id: str
    reason: str  # in words a person understands


def admit(path: str, root: Path | None, limits: Limits) -> Admitted | Refused | None:
    """Admit one file, or refuse it with the reason; None when it vanished before it could be
    looked at (there is nothing to record: a file put there later is an arrival of its own).

    `root` is the folder the file must lie in (the inbox, or the folder a file given to `submit`
    sits in): a path that leads out of it through a linked folder is refused, before the file is
    opened and again by where the opened file really lies. None: no folder is required (the
    trainer's curated folders). OSError from the path's lstat, other than a vanished file, is
    raised: the caller decides what an unexpected failure means.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    eid = event_id_for(path, st)
    root = root.resolve() if root is not None else None  # once: both checks below compare with it
    reason = _path_refusal(path, st, root, limits)
    if reason is None:
        try:
            got = read_regular_file(path, limits.max_bytes)
        except FileRefused as exc:
            reason = exc.reason
        except FileNotFoundError:
            return None
        except OSError as exc:
            reason = cannot_read(exc)
        else:
            return _judged(path, eid, got, root, limits)
    return Refused(path, eid, reason)


def _path_refusal(path: str, st: os.stat_result, root: Path | None, limits: Limits) -> str | None:
    """What the lstat and the name alone refuse (nothing is opened: opening some devices acts).
    An empty file is left to the image check, which words it."""
    if stat.S_ISLNK(st.st_mode):
        return LINK
    if root is not None and not located_inside(path, root):
        return OUTSIDE
    if not stat.S_ISREG(st.st_mode):
        return NOT_REGULAR
    if not extension_allowed(path):
        return not_accepted(path)
    if st.st_size > limits.max_bytes:
        return too_large(st.st_size, limits.max_bytes)
    return None


def _judged(path: str, eid: str, got: FileBytes, root: Path | None, limits: Limits) -> Admitted | Refused:
    """The bytes read, judged: the open file's own place (a folder on the way swapped for a link
    after the check), then the image itself, from its header."""
    if root is not None and not Path(got.real_path).is_relative_to(root):
        return Refused(path, eid, OUTSIDE)
    try:
        info = inspect_image(got.data, limits.max_pixels)
    except ImageRejected as exc:
        return Refused(path, eid, exc.reason)
    return Admitted(path, eid, got.data, got.sha256, info)


class FileRefused(Exception):
    """The path holds something that is not read: a link, a FIFO or device, a file too large."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FileBytes:
    """The bytes of one regular file, read once: what is hashed is what is classified."""

    data: bytes
    sha256: str
    stat: os.stat_result  # of the file that was opened, not of whatever the path names now
    real_path: str  # where that file really lies (linked folders resolved)


def read_regular_file(path: str, max_bytes: int) -> FileBytes:
    """Read a file that arrived from outside, trusting nothing about what the path names now.

    Opened with UNTRUSTED_OPEN (no link followed, no FIFO waited on); fstat on the open file:
    only a regular file is read. At most max_bytes + 1 bytes are read whatever the size said (a
    growing or sparse file cannot make the reader hold more). Raises FileRefused, or OSError if
    it cannot be read.
    """
    try:
        fd = os.open(path, UNTRUSTED_OPEN)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefused(LINK) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(NOT_REGULAR)
        if st.st_size > max_bytes:
            raise FileRefused(too_large(st.st_size, max_bytes))
        chunks, total = [], 0
        while total <= max_bytes and (chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise FileRefused(too_large(total, max_bytes, at_least=True))
        data = b"".join(chunks)
        return FileBytes(data, hashlib.sha256(data).hexdigest(), st, _opened_path(fd, path))
    finally:
        os.close(fd)


def _opened_path(fd: int, path: str) -> str:
    try:  # Linux: the kernel's own name for the open file, immune to later swaps
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
