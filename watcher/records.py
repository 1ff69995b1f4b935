"""What the database says about the watcher's files, asked so that a database away is a
warning with its cause (never its statement or parameters), not a stopped watcher."""

from __future__ import annotations

import logging

from sqlalchemy.orm import sessionmaker

from db.errors import describe
from db.repository import recorded_event_ids

log = logging.getLogger("moodwatch.watcher")


def database_unavailable(what: str, exc: Exception) -> None:
    log.warning("database unavailable, %s: %s", what, describe(exc))  # no statement, no parameters


def already_recorded(sessions: sessionmaker | None, ids: list[str]) -> set[str]:
    """The event ids among ids that have a row; none when the database cannot say."""
    if sessions is None or not ids:
        return set()
    try:
        with sessions() as session:
            return recorded_event_ids(session, ids)
    except Exception as exc:  # the workers' idempotent insert still guards against doubles
        database_unavailable("cannot check which files are recorded (sending them anyway)", exc)
        return set()
