"""Where a command finds the service: the same folders and URLs from any working directory.

`moodwatch run` writes the locations it runs with, and its pid, to
``$MOODWATCH_HOME/service.json`` (default ``~/.config/moodwatch/service.json``). A command
takes them, in order, from:

1. the folder it runs in, when that holds ``data/`` or ``models/`` (a clone): the record is not
   read at all, so a clone never shows another service's database;
2. else the record, setting by setting, a ``MOODWATCH_*`` variable winning. A variable that
   names a folder derives what lives in it: ``MOODWATCH_DATA_DIR`` brings its own SQLite
   database, embedded broker and inbox, not the record's. A record whose `moodwatch run` is
   no longer alive is still used (its results stay readable after Ctrl-C), with a warning line
   naming it stale; one whose data folder is gone is refused;
3. else the variables alone. With none of those a command stops and says where it looked,
   instead of creating an empty service of its own.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from moodwatch.settings import Settings

RECORD_FILE = "service.json"
# Settings a record carries. The database, broker and inbox only when they were set
# explicitly: otherwise they follow the data folder, as they do when it is set by hand.
LOCATIONS = ("data_dir", "model_dir", "database_url", "broker_url", "inbox", "local_model_dir")


class NoHomeError(RuntimeError):
    pass


@dataclass
class ServiceRecord:
    data_dir: str
    model_dir: str
    database_url: str | None = None
    broker_url: str | None = None
    inbox: str | None = None
    local_model_dir: str | None = None
    web_port: int | None = None
    pid: int | None = None
    started_at: str | None = None

    def locations(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if k in LOCATIONS and v is not None}

    def running(self) -> bool:
        """Whether the `moodwatch run` that wrote this is still alive."""
        if not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def home_dir() -> Path:
    if os.environ.get("MOODWATCH_HOME"):
        return Path(os.environ["MOODWATCH_HOME"]).expanduser().absolute()
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "moodwatch"


def record_path() -> Path:
    return home_dir() / RECORD_FILE


def read_record() -> ServiceRecord | None:
    try:
        data = json.loads(record_path().read_text())
        return ServiceRecord(**{k: data.get(k) for k in ServiceRecord.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise NoHomeError(f"unreadable service record {record_path()}: {exc}") from exc


def write_record(settings: Settings) -> Path:
    """Called by `moodwatch run`: the locations it runs with, for every later command."""
    from moodwatch.registry import write_json  # atomic: a reader sees the old record or the new

    record = ServiceRecord(
        data_dir=str(settings.data_dir), model_dir=str(settings.model_dir),
        database_url=settings.database_url, broker_url=settings.broker_url,
        inbox=str(settings.inbox) if settings.inbox else None, web_port=settings.web_port,
        local_model_dir=str(settings.local_model_dir) if settings.local_model_dir else None,
        pid=os.getpid(), started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = record_path()
    write_json(path, asdict(record))
    return path


def _set_in_environment(field: str) -> bool:
    return bool(os.environ.get(f"MOODWATCH_{field.upper()}"))


# What lives in the data folder unless set on its own: a data folder given by a variable
# brings these with it instead of taking the record's.
IN_DATA_DIR = ("database_url", "broker_url", "inbox", "local_model_dir")


def is_service_folder(folder: Path) -> bool:
    """A clone or a folder `moodwatch run` made its home: it holds data/ or models/."""
    return (folder / "data").is_dir() or (folder / "models").is_dir()


def _from_record(record: ServiceRecord) -> dict[str, str]:
    """The record's locations a command takes: those no variable sets, nor derives."""
    taken = {k: v for k, v in record.locations().items() if not _set_in_environment(k)}
    if _set_in_environment("data_dir"):
        for key in IN_DATA_DIR:
            taken.pop(key, None)
    return taken


def _describe(record: ServiceRecord) -> str:
    started = f", started {record.started_at}" if record.started_at else ""
    return f"{record_path()} (pid {record.pid or '?'}{started})"


def _checked(record: ServiceRecord, taken: dict[str, str]) -> None:
    """Refuse a record whose data folder is gone; warn when its service is not running."""
    alive = record.running()
    if "data_dir" in taken and not Path(taken["data_dir"]).is_dir():
        state = "still running" if alive else "stale: that run is no longer alive"
        raise NoHomeError(
            f"the service recorded in {_describe(record)} is {state}, and its data folder "
            f"{taken['data_dir']} no longer exists; start one with `moodwatch run`, delete the "
            "record, or set MOODWATCH_DATA_DIR"
        )
    if not alive:
        # A stopped service's results stay readable; the user must know it is not running.
        print(f"warning: stale service record {_describe(record)}: that `moodwatch run` is no "
              "longer running; using the folders and database it left", file=sys.stderr)


def load_settings(starting_service: bool = False) -> Settings:
    """The settings of the service a command talks to (see the module docstring).

    starting_service: `moodwatch run` itself, which ignores a record whose data folder is gone
    and else makes a new home right here; it is never warned about a stale record (it is the
    restart).
    """
    cwd = Path.cwd()
    if is_service_folder(cwd):
        return Settings()
    record = read_record()
    if record is not None:
        taken = _from_record(record)
        if starting_service and "data_dir" in taken and not Path(taken["data_dir"]).is_dir():
            taken = None  # the old service's folders are gone: start afresh here
        elif taken and not starting_service:
            _checked(record, taken)
        if taken is not None:
            return Settings(**taken)
    told = any(_set_in_environment(k) for k in LOCATIONS)
    if not (told or starting_service):
        raise NoHomeError(
            f"no moodwatch service found: no {record_path()} (written by `moodwatch run`) and no "
            f"data/ or models/ in {cwd}; start one with `moodwatch run`, or set MOODWATCH_HOME (the "
            "folder of service.json) or MOODWATCH_DATA_DIR and MOODWATCH_MODEL_DIR"
        )
    return Settings()
