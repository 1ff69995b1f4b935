"""The watcher's record of a settled file's check: moodwatch.admission decides, this keeps what
the watcher needs of it (an accepted file's sha256 for its message, a refused one's reason)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moodwatch.admission import Limits, Refused, admit


@dataclass
class Checked:
    path: str
    event_id: str
    sha256: str | None = None
    rejected: str | None = None  # the reason, when the file is refused


def check_arrival(path: str, inbox: Path, max_bytes: int, max_pixels: int) -> Checked | None:
    """Check one file against `inbox` (the folder it must lie in); None when it vanished before
    it could be looked at."""
    got = admit(path, inbox, Limits(max_bytes, max_pixels))
    if got is None:
        return None
    if isinstance(got, Refused):
        return Checked(path, got.event_id, rejected=got.reason)
    return Checked(path, got.event_id, sha256=got.sha256)
