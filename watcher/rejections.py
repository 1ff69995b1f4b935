"""Rejected files, kept until their rows are written: by event id, so a rejection kept for retry
while the database is locked is not queued a second time when the rescan finds its file again."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from db.errors import describe
from db.repository import insert_results
from moodwatch.admission import FileRefused, read_regular_file
from moodwatch.files import event_id_for, printable
from moodwatch.outcome import Outcome
from moodwatch.vocab import Status
from watcher.records import already_recorded
from watcher.validation import Checked

log = logging.getLogger("moodwatch.watcher")


@dataclass(frozen=True)
class Written:
    """What one write of the rejections recorded."""

    earlier: dict[str, str]  # event id -> path: rows an earlier try wrote, whose answer was lost
    rows: list[Outcome]  # the rows written now: their files move

    def recorded(self) -> dict[str, str]:
        """Event id -> path of every rejection now known to have its row."""
        return {**self.earlier, **{r.event_id: r.path for r in self.rows}}


class Rejections:
    def __init__(self, sessions: sessionmaker | None, max_bytes: int):
        self.sessions = sessions
        self.max_bytes = max_bytes
        self._waiting: dict[str, Checked] = {}

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._waiting

    def paths(self) -> list[str]:
        return [c.path for c in self._waiting.values()]

    def event_ids(self) -> set[str]:
        return set(self._waiting)

    def keep(self, checked: Checked, root: Path) -> None:
        """Keep a rejection for its row, with the sha256 of its bytes when they can be read.
        `root` is the folder the file was checked against."""
        if checked.sha256 is None:
            checked = replace(checked, sha256=_sha256_of(checked, root, self.max_bytes))
        self._waiting[checked.event_id] = checked

    def write(self) -> Written:
        """Write the rows of the rejections kept; on a database error they stay for a retry."""
        if not self._waiting or self.sessions is None:
            return Written({}, [])
        rejects, self._waiting = self._waiting, {}
        done = already_recorded(self.sessions, list(rejects))
        earlier = {eid: rejects.pop(eid).path for eid in done}  # not written again
        now = datetime.now(UTC)
        rows = [Outcome.new(c.event_id, c.path, now, status=Status.REJECTED, error=c.rejected,
                            sha256=c.sha256, classified_at=now) for c in rejects.values()]
        try:
            with self.sessions() as session, session.begin():
                insert_results(session, rows)
        except Exception as exc:
            log.warning("database unavailable, %d rejection(s) kept for retry: %s", len(rows), describe(exc))
            self._waiting = {**rejects, **self._waiting}
            return Written(earlier, [])
        for row in rows:
            log.info("%s: rejected (%s)", printable(row.path), printable(row.error))
        return Written(earlier, rows)


def unchecked(path: str, exc: Exception) -> Checked | None:
    """A rejection for a file the checks failed on unexpectedly; None if it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return Checked(path, event_id_for(path, st), rejected=f"could not be checked: {exc.__class__.__name__}")


def _sha256_of(checked: Checked, root: Path, max_bytes: int) -> str | None:
    """The sha256 of a rejected file's bytes, when it can be read: a regular file, inside the
    folder it was checked against (a linked folder leading elsewhere is never read), no larger
    than the limit, and still the arrival that was checked."""
    try:
        got = read_regular_file(checked.path, max_bytes)
    except (FileRefused, OSError):
        return None
    if not Path(got.real_path).is_relative_to(root.resolve()):
        return None
    return got.sha256 if event_id_for(checked.path, got.stat) == checked.event_id else None
