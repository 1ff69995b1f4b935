"""The rescan's walk of the inbox: every file and link with its event id (missed events,
restarts), and the sub-folders with no file, which the moves may have emptied."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from moodwatch.files import event_id_for, printable
from moodwatch.filters import is_ignored

log = logging.getLogger("moodwatch.watcher")


@dataclass(frozen=True)
class Walk:
    """What one walk of the inbox saw."""

    files: dict[str, str | None]  # path -> event id (None: gone before its lstat)
    bare: list[tuple[str, os.stat_result]]  # sub-folders with no file, as they were seen

    @property
    def found(self) -> dict[str, str]:
        """Event id -> path of every file still there."""
        return {eid: path for path, eid in self.files.items() if eid is not None}


def walk_inbox(inbox: Path) -> Walk:
    files: dict[str, str | None] = {}
    bare: list[tuple[str, os.stat_result]] = []
    for root, dirs, names in os.walk(inbox, followlinks=False):
        if not names and root != str(inbox):
            with contextlib.suppress(OSError):
                bare.append((root, os.lstat(root)))
        dirs[:] = [d for d in dirs if not is_ignored(os.path.join(root, d), inbox)]
        # Links to folders are not followed, but each one gets its own outcome.
        for path in [os.path.join(root, n) for n in names] + \
                [os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d))]:
            if not is_ignored(path, inbox):
                files[path] = _event_id(path)
    return Walk(files, bare)


def remove_emptied(bare: list[tuple[str, os.stat_result]], settle_seconds: float) -> None:
    """Remove the inbox's sub-folders that the moves emptied. Only a folder nobody has
    touched for the settle time (mtime and ctime as seen by the walk: a folder just created,
    or just moved in, may be about to be filled), and only if empty: os.rmdir refuses any
    other, so no file can be lost. Deepest first, so a tree of empty folders goes at once."""
    settled = time.time() - settle_seconds
    for folder, st in reversed(bare):  # os.walk lists a folder before its sub-folders
        if max(st.st_mtime, st.st_ctime) > settled or not stat.S_ISDIR(st.st_mode):
            continue
        try:
            os.rmdir(folder)
        except OSError:  # not empty (a file, a hidden one, arrived or stayed): it stays
            continue
        log.info("%s: empty folder removed from the inbox", printable(folder))


def _event_id(path: str) -> str | None:
    """A file's event id from an lstat alone (a file sent already is not read again)."""
    try:
        return event_id_for(path, os.lstat(path))
    except OSError:
        return None
