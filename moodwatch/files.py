"""Files the service did not write: read safely, named safely, moved without ever overwriting or
deleting one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moodwatch.settings import Settings
from moodwatch.vocab import Status

log = logging.getLogger("moodwatch.files")

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


def too_large(size: int, limit: int) -> str:
    """The refusal of a file over MOODWATCH_MAX_FILE_BYTES, in the same words wherever it is met
    (the watcher's check, the worker's read, bytes received over the broker)."""
    return f"file too large: {size:,} bytes (limit {limit:,})"


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


def _opened_path(fd: int, path: str) -> str:
    try:  # Linux: the kernel's own name for the open file, immune to later swaps
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def read_regular_file(path: str, max_bytes: int) -> FileBytes:
    """Read a file that arrived from outside, trusting nothing about what the path names now.

    O_NOFOLLOW: a symbolic link swapped in after a check is refused, never followed. O_NONBLOCK:
    a FIFO swapped in does not hang the reader. fstat on the open file: only a regular file is
    read. At most max_bytes + 1 bytes are read whatever the size said (a growing or sparse file
    cannot make the reader hold more). Raises FileRefused, or OSError if it cannot be read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefused("symbolic link: links are not followed (drop the file itself)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused("not a regular file")
        if st.st_size > max_bytes:
            raise FileRefused(too_large(st.st_size, max_bytes))
        chunks, total = [], 0
        while total <= max_bytes and (chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise FileRefused(f"file too large: more than {max_bytes:,} bytes (limit {max_bytes:,})")
        data = b"".join(chunks)
        return FileBytes(data, hashlib.sha256(data).hexdigest(), st, _opened_path(fd, path))
    finally:
        os.close(fd)


def located(path: str) -> str:
    """Where a path lies once linked folders are resolved; the last part is kept as it is, so a
    link is judged by where the link itself sits (and then refused as a link, not followed)."""
    absolute = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def inside(path: str, folder: Path) -> bool:
    return Path(located(path)).is_relative_to(folder.resolve())


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (photos can be large)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, the filesystem holding folder allows."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def fitted_name(name: str, limit: int, tail: str = "") -> str:
    """`name` with `tail` (a numeric suffix) before its extension, shortened to at most `limit`
    bytes in the filesystem encoding. A shortened name keeps its extension and gets a hash of the
    whole name, so two long names that share a beginning still get different names."""
    stem, ext = os.path.splitext(name)
    if len(os.fsencode(ext)) > 32:  # not an extension anyone relies on: part of the name
        stem, ext = name, ""
    whole = f"{stem}{tail}{ext}"
    if len(os.fsencode(whole)) <= limit:
        return whole
    end = f"-{hashlib.sha256(raw_bytes(name)).hexdigest()[:10]}{tail}{ext}"
    room = limit - len(os.fsencode(end))
    while stem and len(os.fsencode(stem)) > room:  # whole characters: no UTF-8 sequence cut
        stem = stem[:-1]
    return f"{stem}{end}"


def unique_destination(folder: Path, name: str) -> Path:
    """A path in folder named `name`, with a numeric suffix if that name is taken.

    The name is made printable first: a file whose name is not UTF-8 gets a name that a row can
    hold exactly (its raw name stays recoverable from the row's ``path_bytes``). A name too long
    for the folder's filesystem (a long name with a suffix added, raw bytes escaped to four
    characters each) is shortened to fit, so no name can make a move fail."""
    folder.mkdir(parents=True, exist_ok=True)
    name, limit = printable(name), name_max(folder)
    candidate = folder / fitted_name(name, limit)
    n = 1
    while os.path.lexists(candidate):
        candidate = folder / fitted_name(name, limit, f"-{n}")
        n += 1
    return candidate


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file whole or not at all: a unique temporary beside it (threads and processes never
    share one), synced, then renamed over it. The one way the service writes a file readers use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def move_no_clobber(src: Path, folder: Path) -> Path:
    """Move src into folder under a free name; a symlink is moved itself, its target untouched."""
    return move_to(src, unique_destination(folder, src.name))


# os.link's errors where the filesystems cannot link the two names: another filesystem, or one
# with no hard links (FAT, some network and FUSE filesystems) or no more links to this file.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)
# What a partial copy is called while it is written: hidden, so the watcher and a person browsing
# the folder pass it by, and short, so it fits beside any name.
TEMP_PREFIX, TEMP_SUFFIX = ".moodwatch-", ".moving"


def move_to(src: Path, dest: Path) -> Path:
    """Move src to dest, or to a free name beside it if dest was taken meanwhile; returns where
    it went. Never overwrites: a hard link claims the new name atomically (it fails if the name
    exists), then the old name is removed; the file itself is never deleted. A symbolic link is
    moved as a link, its target untouched. Across filesystems, see _move_across."""
    linked = _link_to_free_name(src, dest)
    if linked is None:
        return _move_across(src, dest)
    os.unlink(src)  # the old name only: the file lives on under its new one
    return linked


def _link_to_free_name(src: Path, dest: Path) -> Path | None:
    """Hard-link src under dest, or under a free name beside it if dest is taken; the name it got,
    or None when these filesystems cannot link the two (the caller copies or renames instead)."""
    while True:
        try:
            os.link(src, dest, follow_symlinks=False)
            return dest
        except FileExistsError:
            try:
                same = os.path.samestat(os.lstat(src), os.lstat(dest))
            except FileNotFoundError:
                continue  # the name was freed meanwhile: try it again
            if same:
                return dest  # a move cut short between the two steps: the new name is already there
            dest = unique_destination(dest.parent, dest.name)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            return None


def _move_across(src: Path, dest: Path) -> Path:
    """A move the filesystem cannot do by linking: a complete, synced copy under a hidden
    temporary name in dest's folder, renamed into place without overwriting, then the source
    name removed. Whatever fails (a full disk, most often), the partial copy is removed and the
    source stays as it was: a retry starts afresh and leaves no junk behind."""
    tmp = _copy_beside(src, dest.parent)
    try:
        final = _claim(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(final.parent)  # the new name is on disk before the old one goes
    try:
        os.unlink(src)
    except BaseException:
        # The source could not be removed (a read-only inbox): the copy is ours and the file is
        # still where it was, so the copy goes (a retry would only add another).
        final.unlink(missing_ok=True)
        raise
    return final


def _copy_beside(src: Path, folder: Path) -> Path:
    """A copy of src (a link copied as a link) under a fresh hidden name in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.path.islink(src):
        tmp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        os.symlink(os.readlink(src), tmp)
        return tmp
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    with open(os.open(src, flags), "rb") as inp:
        if not stat.S_ISREG(os.fstat(inp.fileno()).st_mode):  # a FIFO or device has no bytes to copy
            raise OSError(errno.EXDEV, "only a regular file or a link can move to another filesystem",
                          os.fspath(src))
        fd, name = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(inp, out, 1 << 20)
                out.flush()
                # Times and mode are a courtesy: a filesystem without them still takes the file.
                with contextlib.suppress(OSError):
                    shutil.copystat(src, tmp, follow_symlinks=False)
                os.fsync(out.fileno())  # the whole copy is on disk before the source name goes
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return tmp


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems cannot sync a folder: no matter
            os.fsync(fd)
    finally:
        os.close(fd)


def _claim(tmp: Path, dest: Path) -> Path:
    """Give tmp (in dest's folder) the name dest, or a free name beside it; never overwrites."""
    linked = _link_to_free_name(tmp, dest)
    if linked is None:
        return _rename_no_clobber(tmp, dest)
    os.unlink(tmp)  # the temporary name only: the copy lives on under its new one
    return linked


def _rename_no_clobber(tmp: Path, dest: Path) -> Path:
    """On a filesystem without hard links: renameat2(RENAME_NOREPLACE) where the kernel and the
    filesystem have it; else a rename to a name just seen free (the one case with a window)."""
    while True:
        if os.path.lexists(dest):
            dest = unique_destination(dest.parent, dest.name)
        done = _renameat2_noreplace(tmp, dest)
        if done is None:
            os.rename(tmp, dest)
            return dest
        if done:
            return dest


_RENAME_NOREPLACE, _AT_FDCWD = 1, -100


def _renameat2_noreplace(src: Path, dest: Path) -> bool | None:
    """True when renamed, False when dest exists, None when this system cannot tell."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return None
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dest), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        return False
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return None
    raise OSError(err, os.strerror(err), os.fspath(dest))


def outcome_folder(row: dict[str, Any], settings: Settings) -> Path | None:
    if row["status"] == Status.CLASSIFIED and settings.move_processed and row.get("label"):
        return settings.processed_dir / row["label"]
    if row["status"] == Status.REJECTED and settings.move_rejected:
        return settings.rejected_dir
    return None


@dataclass(frozen=True)
class Move:
    event_id: str
    src: Path
    dest: Path


Recorder = Callable[[dict[str, str]], None]  # writes event id -> where the file is, in the rows


def kept_folder(src: str, outcome: Path, settings: Settings) -> Path:
    """The folder under the outcome folder that keeps src's place in the inbox: a file from
    inbox/trip/day1/ goes to processed/<label>/trip/day1/ (MOODWATCH_KEEP_FOLDERS; else flat).

    The relative folder is taken from where src really lies (linked folders resolved), so `..`
    or a linked folder can name nothing outside the inbox; each part is made printable and
    shortened to fit like a file name. A part that already exists as a link or a file, under
    the outcome folder, is never followed or replaced: the file goes flat into the outcome
    folder instead, and nothing is created outside it."""
    if not settings.keep_folders:
        return outcome
    relative = Path(located(src)).parent.relative_to(settings.inbox_dir.resolve())
    folder = outcome
    for part in relative.parts:
        if part in ("", ".", ".."):  # never from a resolved path; refused all the same
            return outcome
        folder = folder / fitted_name(printable(part), name_max(outcome))  # 255 until it exists
        if os.path.lexists(folder) and (os.path.islink(folder) or not folder.is_dir()):
            log.warning("%s is not a plain folder: %s goes to %s without its sub-folders",
                        printable(str(folder)), printable(src), printable(str(outcome)))
            return outcome
    return folder


def _destination(row: dict[str, Any], folder: Path) -> Path:
    """Where the row says the file goes, if a move was cut short; else a free name."""
    stored = row.get("stored_path")
    cut_short = stored and stored != row["path"] and Path(stored).parent == folder
    if cut_short and (not os.path.lexists(stored)
                      or os.path.samestat(os.lstat(row["path"]), os.lstat(stored))):
        return Path(stored)
    return unique_destination(folder, os.path.basename(row["path"]))


def plan_moves(rows: list[dict[str, Any]], settings: Settings) -> tuple[list[Move], dict[str, str]]:
    """The recorded files to move out of the inbox: only files inside it are moved (`submit` of a
    file elsewhere leaves it be), and only to a folder of their outcome. Also returns the rows
    whose move could not even be planned (event id -> where the file still is): one odd file
    never stops the others."""
    moves: list[Move] = []
    unplanned: dict[str, str] = {}
    for row in rows:
        folder = outcome_folder(row, settings)
        src = row["path"]
        try:
            if folder is None or not os.path.lexists(src) or not inside(src, settings.inbox_dir):
                continue
            folder = kept_folder(src, folder, settings)
            moves.append(Move(row["event_id"], Path(src), _destination(row, folder)))
        except Exception as exc:
            _cannot_move(src, folder, exc)
            if row.get("stored_path") != src:
                unplanned[row["event_id"]] = src
    return moves, unplanned


def _cannot_move(src: str | Path, dest: str | Path | None, exc: Exception) -> None:
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{exc.__class__.__name__}: {exc}"
    log.warning("could not move %s to %s: %s", printable(str(src)), printable(str(dest)), cause)


def move_outcomes(rows: list[dict[str, Any]], settings: Settings, record: Recorder) -> dict[str, str]:
    """Move recorded files to their outcome folders; returns event id -> where each went.

    Where a file goes is recorded before it moves, so a crash at any point leaves each row
    pointing at its file, or its file in the inbox with the row naming its destination, which
    the watcher's rescan then finishes. If recording fails, nothing moves. A move that fails is
    logged with its cause, and its row points back at the inbox, where the file still is; the
    other files move all the same.
    """
    moves, fixes = plan_moves(rows, settings)
    if moves:
        record({m.event_id: str(m.dest) for m in moves})
    moved: dict[str, str] = {}
    for m in moves:
        try:
            final = move_to(m.src, m.dest)
        except Exception as exc:
            _cannot_move(m.src, m.dest, exc)
            if os.path.lexists(m.src):
                fixes[m.event_id] = str(m.src)
            continue
        moved[m.event_id] = str(final)
        if final != m.dest:  # the planned name was taken meanwhile
            fixes[m.event_id] = str(final)
    if fixes:
        record(fixes)
    return moved
