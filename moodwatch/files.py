"""Files the service did not write: named safely, identified per arrival, moved without ever
overwriting or deleting one. Reading one (and deciding whether it is taken) is
moodwatch.admission's; where a recorded one goes is moodwatch.outcome_moves'. Imports nothing of
the project, so both can build on it."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

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


# How a file someone else put there is opened. O_NOFOLLOW: a symbolic link swapped in after a
# check is refused, never followed. O_NONBLOCK: a FIFO swapped in does not hang the reader (an
# open for reading waits for a writer otherwise); an fstat of the open file then refuses it.
UNTRUSTED_OPEN = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
    getattr(os, "O_CLOEXEC", 0)


def located(path: str) -> str:
    """Where a path lies once linked folders are resolved; the last part is kept as it is, so a
    link is judged by where the link itself sits (and then refused as a link, not followed)."""
    absolute = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def inside(path: str, folder: Path) -> bool:
    return located_inside(path, folder.resolve())


def located_inside(path: str, real_folder: Path) -> bool:
    """inside() for a folder already resolved (once for many paths: each resolve is an lstat
    per part of the path)."""
    return Path(located(path)).is_relative_to(real_folder)


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
    with open(os.open(src, UNTRUSTED_OPEN), "rb") as inp:
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
