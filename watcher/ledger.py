"""What this process recorded or sent, by event id: a file in it is not taken again. Pruned by
the rescan once the file has left the inbox (so a long-running watcher does not grow without
bound), or once it has been sent longer than MOODWATCH_RESEND_SECONDS ago with no row (so it is
sent again)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Handled:
    """A file this process recorded or sent, and when (monotonic seconds)."""

    path: str
    since: float  # when it was sent (or recorded)
    recorded: bool = False  # known to have its row: never sent again


class Ledger:
    def __init__(self) -> None:
        self._by_event: dict[str, Handled] = {}

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._by_event

    def __len__(self) -> int:
        return len(self._by_event)

    def paths(self) -> list[str]:
        return [h.path for h in self._by_event.values()]

    def path_of(self, event_id: str) -> str:
        return self._by_event[event_id].path

    def queued(self, event_id: str, path: str) -> None:
        self._by_event[event_id] = Handled(path, time.monotonic())

    def recorded(self, event_id: str, path: str) -> None:
        self._by_event[event_id] = Handled(path, time.monotonic(), recorded=True)

    def mark_recorded(self, event_id: str) -> None:
        if event_id in self._by_event:
            self._by_event[event_id].recorded = True

    def restart_clock(self, event_id: str) -> None:
        """The resend clock starts when a file is sent, not when it was queued."""
        if event_id in self._by_event:
            self._by_event[event_id].since = time.monotonic()

    def forget(self, event_id: str) -> None:
        self._by_event.pop(event_id, None)

    def prune_gone(self, waiting: set[str]) -> None:
        """Forget files no longer in the inbox, except those still waiting to be sent or recorded."""
        for eid, handled in list(self._by_event.items()):
            if eid not in waiting and not os.path.lexists(handled.path):
                del self._by_event[eid]

    def unrecorded_since(self, cutoff: float, waiting: Iterable[str]) -> list[str]:
        """Files sent at or before `cutoff` (monotonic) with no row known, not waiting to be sent."""
        skip = set(waiting)
        return [eid for eid, h in self._by_event.items()
                if h.since <= cutoff and not h.recorded and eid not in skip]
