"""Where a command finds the service: the same folders and URLs from any working directory.

`moodwatch run` writes the locations it runs with to ``$MOODWATCH_HOME/service.json``
(default ``~/.config/moodwatch/service.json``). Every other command reads them, setting by
setting: a ``MOODWATCH_*`` variable wins, then the record, then the folder the command runs in
(``./data`` and ``./models``, used only when one of them is there). With none of those a
command stops and says where it looked, instead of creating an empty service of its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from moodwatch.settings import Settings

RECORD_FILE = "service.json"
# Settings a record carries. The database, broker and inbox only when they were set
# explicitly: otherwise they follow the data folder, as they do when it is set by hand.
LOCATIONS = ("data_dir", "model_dir", "database_url", "broker_url", "inbox")


class NoHomeError(RuntimeError):
    pass


@dataclass
class ServiceRecord:
    data_dir: str
    model_dir: str
    database_url: str | None = None
    broker_url: str | None = None
    inbox: str | None = None
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
        pid=os.getpid(), started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = record_path()
    write_json(path, asdict(record))
    return path


def _set_in_environment(field: str) -> bool:
    return bool(os.environ.get(f"MOODWATCH_{field.upper()}"))


def load_settings(starting_service: bool = False) -> Settings:
    """The settings of the service a command talks to (see the module docstring).

    starting_service: `moodwatch run` itself, which uses the current folder when it holds
    data/ or models/ (a fresh clone), then the record, and else makes a new home right here.
    """
    cwd = Path.cwd()
    cwd_is_home = (cwd / "data").is_dir() or (cwd / "models").is_dir()
    record = None if starting_service and cwd_is_home else read_record()
    if record is not None:
        from_record = {k: v for k, v in record.locations().items() if not _set_in_environment(k)}
        return Settings(**from_record)
    told = any(_set_in_environment(k) for k in LOCATIONS)
    if not (told or cwd_is_home or starting_service):
        raise NoHomeError(
            f"no moodwatch service found: no {record_path()} (written by `moodwatch run`) and no "
            f"data/ or models/ in {cwd}; start one with `moodwatch run`, or set MOODWATCH_HOME (the "
            "folder of service.json) or MOODWATCH_DATA_DIR and MOODWATCH_MODEL_DIR"
        )
    return Settings()
