"""The filesystem's side of the intake: the observer's events name the files to look at (a
folder created or moved in asks for a rescan instead); they wait under a lock, because the
observer runs in its own thread, until the loop takes them."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from moodwatch.filters import is_ignored

log = logging.getLogger("moodwatch.watcher")

INOTIFY_HELP = (
    "the system's inotify watch limit is reached, so new folders would be missed. Raise it with "
    "`sudo sysctl fs.inotify.max_user_watches=524288` (and add that line to /etc/sysctl.conf), "
    "or run `moodwatch watch --polling`."
)


class InotifyLimitError(RuntimeError):
    pass


class Intake:
    """Paths the observer noticed, until the loop takes them."""

    def __init__(self, inbox: Path, on_folder: Callable[[], None]):
        self.inbox = inbox
        self.on_folder = on_folder  # a folder arrived: its files raise no events of their own
        self._lock = threading.Lock()
        self._noticed: list[str] = []
        self._observer: BaseObserver | None = None

    def notice(self, path: str) -> None:
        if is_ignored(path, self.inbox):
            return
        with self._lock:
            self._noticed.append(path)

    def take(self) -> list[str]:
        """The paths noticed since the last call."""
        with self._lock:
            noticed, self._noticed = self._noticed, []
        return noticed

    def start(self, polling: bool) -> None:
        observer = PollingObserver(timeout=1.0) if polling else Observer()
        observer.schedule(_Handler(self), str(self.inbox), recursive=True)
        try:
            observer.start()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                raise InotifyLimitError(INOTIFY_HELP) from exc
            raise
        self._observer = observer
        log.info("watching %s (%s)", self.inbox, "polling" if polling else "native events")

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


class _Handler(FileSystemEventHandler):
    def __init__(self, intake: Intake):
        self.intake = intake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if event.event_type in ("created", "moved"):
                # A folder moved in whole brings files that raised no events of their own.
                self.intake.on_folder()
            return
        path = getattr(event, "dest_path", "") or event.src_path
        if event.event_type in ("created", "modified", "moved", "closed"):
            self.intake.notice(os.fsdecode(path))
