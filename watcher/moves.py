"""The watcher's moves of recorded files out of the inbox, in the crash-safe order of
move_outcomes (write the row, record where the file goes, then move it); and the moves a crash
or an error cut short, finished by the rescan."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import sessionmaker

from db.errors import describe
from db.repository import set_stored_paths, unmoved_rows
from moodwatch.outcome import Outcome
from moodwatch.outcome_moves import move_outcomes
from moodwatch.settings import Settings
from watcher.records import database_unavailable

log = logging.getLogger("moodwatch.watcher")


class Mover:
    def __init__(self, settings: Settings, sessions: sessionmaker | None, any_age: bool):
        self.settings = settings
        self.sessions = sessions
        # With the broker transport no worker moves files: a cut-short move is finished at any
        # age. Else only one older than MOODWATCH_RESEND_SECONDS (a worker may be moving it now).
        self.any_age = any_age

    def move(self, recorded: list[Outcome]) -> None:
        """Move the files of outcomes recorded, each at the path the watcher saw it at."""
        if not recorded:
            return
        try:
            move_outcomes(recorded, self.settings, self._record_where)
        except Exception as exc:  # recorded first, moved after: the next rescan finishes it
            log.warning("%d recorded file(s) not moved yet: %s", len(recorded), describe(exc))

    def finish(self, found: dict[str, str]) -> None:
        """Recorded files still in the inbox (event id -> path) whose move a crash or an error
        cut short: move them where their rows say, or to their outcome folder."""
        if not found or self.sessions is None:
            return
        before = datetime.now(UTC) - timedelta(seconds=0 if self.any_age else self.settings.resend_seconds)
        try:
            with self.sessions() as session:
                unmoved = unmoved_rows(session, list(found), before)
        except Exception as exc:
            database_unavailable("cannot look for unfinished moves", exc)
            return
        # The path the watcher found each file at: a row's is printable, not the file's name.
        self.move([replace(o, path=found[o.event_id]) for o in unmoved])

    def _record_where(self, where: dict[str, str]) -> None:
        with self.sessions() as session, session.begin():
            set_stored_paths(session, where)
