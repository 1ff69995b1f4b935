"""Moving the files whose rows this run added out of the inbox (shared transport), after the
commit: a file leaves the inbox only once its row exists. The order of the moves themselves is
moodwatch.outcome_moves': write where each file goes, then move it."""

from __future__ import annotations

import logging

from sqlalchemy.orm import sessionmaker

from db.errors import describe
from db.repository import set_stored_paths
from moodwatch.outcome import Outcome
from moodwatch.outcome_moves import move_outcomes
from moodwatch.settings import Settings

log = logging.getLogger("moodwatch.worker")


def move_recorded(rows: list[Outcome], settings: Settings, sessions: sessionmaker) -> None:
    """Move the recorded files to their outcome folders; a failure is logged, never raised."""
    def record(where: dict[str, str]) -> None:
        with sessions() as session, session.begin():
            set_stored_paths(session, where)

    try:
        move_outcomes(rows, settings, record)
    except Exception as exc:  # the rows are written: the watcher's rescan moves the files later
        log.warning("%d row(s) recorded but their files not moved yet (%s); the watcher's "
                    "rescan will move them", len(rows), describe(exc))
