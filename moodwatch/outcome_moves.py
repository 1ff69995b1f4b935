"""Where a recorded file goes: the folder of its outcome (processed/<label>, rejected), keeping
its place in the inbox, and the crash-safe order of the moves there: write where each file goes
in its row, then move it (moodwatch.files moves it without ever overwriting or deleting one)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moodwatch.files import fitted_name, inside, located, move_to, name_max, printable, unique_destination
from moodwatch.outcome import Outcome
from moodwatch.settings import Settings
from moodwatch.vocab import Status

log = logging.getLogger("moodwatch.outcome_moves")


def outcome_folder(outcome: Outcome, settings: Settings) -> Path | None:
    if outcome.status == Status.CLASSIFIED and settings.move_processed and outcome.label:
        return settings.processed_dir / outcome.label
    if outcome.status == Status.REJECTED and settings.move_rejected:
        return settings.rejected_dir
    return None


@dataclass(frozen=True)
class Move:
    event_id: str
    src: Path
    dest: Path


Recorder = Callable[[dict[str, str]], None]  # writes event id -> where the file is, in the rows


def kept_folder(src: str, outcome: Path, settings: Settings) -> Path:
    """The folder under the outcome folder that keeps src's place in the inbox: a file from
    inbox/trip/day1/ goes to processed/<label>/trip/day1/ (MOODWATCH_KEEP_FOLDERS; else flat).

    The relative folder is taken from where src really lies (linked folders resolved), so `..`
    or a linked folder can name nothing outside the inbox; each part is made printable and
    shortened to fit like a file name. A part that already exists as a link or a file, under
    the outcome folder, is never followed or replaced: the file goes flat into the outcome
    folder instead, and nothing is created outside it."""
    if not settings.keep_folders:
        return outcome
    relative = Path(located(src)).parent.relative_to(settings.inbox_dir.resolve())
    folder = outcome
    for part in relative.parts:
        if part in ("", ".", ".."):  # never from a resolved path; refused all the same
            return outcome
        folder = folder / fitted_name(printable(part), name_max(outcome))  # 255 until it exists
        if os.path.lexists(folder) and (os.path.islink(folder) or not folder.is_dir()):
            log.warning("%s is not a plain folder: %s goes to %s without its sub-folders",
                        printable(str(folder)), printable(src), printable(str(outcome)))
            return outcome
    return folder


def _destination(outcome: Outcome, folder: Path) -> Path:
    """Where the row says the file goes, if a move was cut short; else a free name."""
    stored = outcome.stored_path
    cut_short = stored and stored != outcome.path and Path(stored).parent == folder
    if cut_short and (not os.path.lexists(stored)
                      or os.path.samestat(os.lstat(outcome.path), os.lstat(stored))):
        return Path(stored)
    return unique_destination(folder, os.path.basename(outcome.path))


def plan_moves(outcomes: list[Outcome], settings: Settings) -> tuple[list[Move], dict[str, str]]:
    """The recorded files to move out of the inbox: only files inside it are moved (`submit` of a
    file elsewhere leaves it be), and only to a folder of their outcome. Also returns the rows
    whose move could not even be planned (event id -> where the file still is): one odd file
    never stops the others."""
    moves: list[Move] = []
    unplanned: dict[str, str] = {}
    for outcome in outcomes:
        folder = outcome_folder(outcome, settings)
        src = outcome.path
        try:
            if folder is None or not os.path.lexists(src) or not inside(src, settings.inbox_dir):
                continue
            folder = kept_folder(src, folder, settings)
            moves.append(Move(outcome.event_id, Path(src), _destination(outcome, folder)))
        except Exception as exc:
            _cannot_move(src, folder, exc)
            if outcome.stored_path != src:
                unplanned[outcome.event_id] = src
    return moves, unplanned


def _cannot_move(src: str | Path, dest: str | Path | None, exc: Exception) -> None:
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{exc.__class__.__name__}: {exc}"
    log.warning("could not move %s to %s: %s", printable(str(src)), printable(str(dest)), cause)


def move_outcomes(outcomes: list[Outcome], settings: Settings, record: Recorder) -> dict[str, str]:
    """Move recorded files to their outcome folders; returns event id -> where each went.

    Where a file goes is recorded before it moves, so a crash at any point leaves each row
    pointing at its file, or its file in the inbox with the row naming its destination, which
    the watcher's rescan then finishes. If recording fails, nothing moves. A move that fails is
    logged with its cause, and its row points back at the inbox, where the file still is; the
    other files move all the same.
    """
    moves, fixes = plan_moves(outcomes, settings)
    if moves:
        record({m.event_id: str(m.dest) for m in moves})
    moved: dict[str, str] = {}
    for m in moves:
        try:
            final = move_to(m.src, m.dest)
        except Exception as exc:
            _cannot_move(m.src, m.dest, exc)
            if os.path.lexists(m.src):
                fixes[m.event_id] = str(m.src)
            continue
        moved[m.event_id] = str(final)
        if final != m.dest:  # the planned name was taken meanwhile
            fixes[m.event_id] = str(final)
    if fixes:
        record(fixes)
    return moved
