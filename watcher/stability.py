"""Decides when a file is completely written: its size and mtime have stood still long enough."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time the (size, mtime) pair was first seen


class StabilityTracker:
    def __init__(self, settle_seconds: float):
        self.settle = settle_seconds
        self._files: dict[str, _Seen] = {}

    def touch(self, path: str) -> None:
        """Note a file event; the settle clock restarts if the file changed."""
        self._observe(path, time.monotonic())

    def _observe(self, path: str, now: float) -> _Seen | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._files.pop(path, None)
            return None
        seen = self._files.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            seen = _Seen(st.st_size, st.st_mtime_ns, now)
            self._files[path] = seen
        return seen

    def due(self) -> list[str]:
        """Files unchanged for the settle time; they leave the tracker."""
        now = time.monotonic()
        ready = []
        for path in list(self._files):
            seen = self._observe(path, now)
            if seen is not None and now - seen.since >= self.settle:
                ready.append(path)
                del self._files[path]
        return ready

    def __contains__(self, path: str) -> bool:
        return path in self._files

    def __len__(self) -> int:
        return len(self._files)
