"""`moodwatch submit`: files or folders given by hand go through the watcher's checks and get
the same outcomes as dropped files; a file that already has a row is reported, and not sent."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from db.repository import register_submissions, rows_for_arrivals
from moodwatch.files import inside
from moodwatch.filters import is_ignored
from moodwatch.settings import Settings
from watcher.sender import Sender
from watcher.service import Watcher
from watcher.validation import Checked, check_arrival


@dataclass
class Submitted:
    """What `moodwatch submit` did with one file."""

    path: str
    rejected: str | None = None  # the reason, when the file is refused
    recorded_as: int | None = None  # the row that already records this file: nothing was sent


def submit_paths(paths: list[Path], settings: Settings, send: Sender,
                 sessions: sessionmaker | None) -> list[Submitted]:
    """Validate files or folders by hand and give them the same outcomes as dropped files;
    a file that already has a row is reported as such, and nothing is sent for it."""
    w = Watcher(settings, send, sessions)
    checked = _checked(_files_under(paths), w.inbox, settings)
    recorded = _recorded_as(sessions, [c for c, _ in checked])
    results = []
    outside: dict[str, str] = {}
    for c, in_inbox in checked:
        results.append(Submitted(c.path, c.rejected, recorded.get(c.event_id)))
        if c.event_id in recorded:
            continue
        if not in_inbox and not c.rejected:
            outside[c.event_id] = c.path
        w.take(c, w.inbox if in_inbox else Path(c.path).parent)
    _register(sessions, outside)
    w.send_all(timeout=settings.claim_ttl_seconds)
    backlog = w.backlog()
    if backlog.pending or backlog.rejects:
        raise RuntimeError(f"{len(backlog.pending)} file(s) could not be queued and "
                           f"{len(backlog.rejects)} rejection(s) not recorded: is the broker/database up?")
    return results


def _files_under(paths: list[Path]) -> list[str]:
    files: list[str] = []
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            for root, _dirs, names in os.walk(p):
                files += [os.path.join(root, n) for n in sorted(names)
                          if not is_ignored(os.path.join(root, n), p)]
        else:
            files.append(str(p))
    return files


def _checked(files: list[str], inbox: Path, settings: Settings) -> list[tuple[Checked, bool]]:
    """Each file checked, and whether it lies in the inbox: one outside it is checked against
    its own folder."""
    out = []
    for f in files:
        in_inbox = inside(f, inbox)
        c = check_arrival(f, inbox if in_inbox else Path(f).parent, settings.max_file_bytes,
                          settings.max_pixels)
        if c is not None:
            out.append((c, in_inbox))
    return out


def _recorded_as(sessions: sessionmaker | None, checked: list[Checked]) -> dict[str, int]:
    """Event id -> the row that already records that file: the same arrival, or the same
    bytes at the place a row says they are now (a processed file submitted again)."""
    if sessions is None or not checked:
        return {}
    with sessions() as session:
        rows = rows_for_arrivals(session, [c.event_id for c in checked], [c.sha256 for c in checked])
    by_event = {r.event_id: r.id for r in rows}
    by_place = {(r.sha256, r.stored_path or r.path): r.id for r in rows if r.sha256}
    found = {}
    for c in checked:
        rid = by_event.get(c.event_id) or by_place.get((c.sha256, c.path))
        if rid is not None:
            found[c.event_id] = rid
    return found


def _register(sessions: sessionmaker | None, outside: dict[str, str]) -> None:
    """Workers read a file outside the inbox only if it was registered here first."""
    if not outside or sessions is None:
        return
    try:
        with sessions() as session, session.begin():
            register_submissions(session, outside)
    except Exception as exc:
        raise RuntimeError(f"could not register {len(outside)} file(s) from outside the inbox: "
                           f"is the database up? ({exc.__class__.__name__})") from exc
