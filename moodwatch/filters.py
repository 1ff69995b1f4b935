"""Which paths are left alone until they are renamed (patterns as data): the watcher does not
send them, and a worker refuses them whatever a message says."""

from __future__ import annotations

import fnmatch
from pathlib import PurePath

# Hidden files, and the temporaries of editors, browsers and copy tools: a download in
# progress becomes a real file by a rename, which the watcher sees as a new file.
IGNORE_PATTERNS: tuple[str, ...] = (
    ".*",
    "*~",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.tmp",
    "*.temp",
    "*.swp",
    "~$*",
    "Thumbs.db",
    "desktop.ini",
)


def is_ignored(path: str | PurePath, root: str | PurePath | None = None) -> bool:
    """True for an ignored file name, or a file inside a hidden folder below root."""
    p = PurePath(path)
    parts = p.relative_to(root).parts if root is not None and p.is_relative_to(root) else (p.name,)
    return any(
        fnmatch.fnmatchcase(part.lower(), pattern.lower())
        for part in parts
        for pattern in IGNORE_PATTERNS
    )
