"""The watcher's moves of recorded files out of the inbox, in the crash-safe order of
move_outcomes (write the row, record where the file goes, then move it); and the moves a crash
or an error cut short, finished by the rescan."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import sessionmaker

from db.errors import describe
from db.repository import set_stored_paths, unmoved_rows
from moodwatch.outcome_moves import move_outcomes
from moodwatch.settings import Settings
from watcher.records import database_unavailable

log = logging.getLogger("moodwatch.watcher")


@dataclass(frozen=True)
class Recorded:
    """A recorded outcome, with its file at the path it has in the inbox now: a row read back
    holds only what a move needs, and the path is the one the watcher saw."""

    event_id: str
    status: str
    label: str | None
    stored_path: str | None
    path: str

    @classmethod
    def at(cls, row: dict[str, Any], path: str) -> Recorded:
        """One row of outcomes_of or unmoved_rows, for the file at `path`."""
        return cls(row["event_id"], row["status"], row["label"], row["stored_path"], path)


class Mover:
    def __init__(self, settings: Settings, sessions: sessionmaker | None, any_age: bool):
        self.settings = settings
        self.sessions = sessions
        # With the broker transport no worker moves files: a cut-short move is finished at any
        # age. Else only one older than MOODWATCH_RESEND_SECONDS (a worker may be moving it now).
        self.any_age = any_age

    def move(self, rows: list[dict[str, Any]]) -> None:
        """Move the files of rows just recorded (the shape move_outcomes reads)."""
        if not rows:
            return
        try:
            move_outcomes(rows, self.settings, self._record_where)
        except Exception as exc:  # recorded first, moved after: the next rescan finishes it
            log.warning("%d recorded file(s) not moved yet: %s", len(rows), describe(exc))

    def move_recorded(self, recorded: list[Recorded]) -> None:
        self.move([asdict(r) for r in recorded])

    def finish(self, found: dict[str, str]) -> None:
        """Recorded files still in the inbox (event id -> path) whose move a crash or an error
        cut short: move them where their rows say, or to their outcome folder."""
        if not found or self.sessions is None:
            return
        before = datetime.now(UTC) - timedelta(seconds=0 if self.any_age else self.settings.resend_seconds)
        try:
            with self.sessions() as session:
                rows = unmoved_rows(session, list(found), before)
        except Exception as exc:
            database_unavailable("cannot look for unfinished moves", exc)
            return
        self.move_recorded([Recorded.at(r, found[r["event_id"]]) for r in rows])

    def _record_where(self, where: dict[str, str]) -> None:
        with self.sessions() as session, session.begin():
            set_stored_paths(session, where)
