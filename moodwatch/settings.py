"""Every setting in one place, read from the environment (prefix ``MOODWATCH_``).

Defaults are the embedded ones a new user gets: folders under the working directory, SQLite
under the data folder, and an embedded Redis when no broker URL is given. Folders are made
absolute when read, so they mean the same thing to every process. `get_settings` also reads
the record `moodwatch run` leaves (moodwatch.home), so a command run from any folder reaches
the service the user started.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LABELS = ("happy", "sad")
STATUSES = ("classified", "rejected", "failed")  # every results row ends in exactly one
IMAGE_SIZE = 256
ALLOWED_EXTENSIONS = frozenset({".jpg", ".jpeg", ".bmp", ".png"})


DEFAULT_MAX_PIXELS = 50_000_000  # the one default: settings, images and the trainer's helpers

class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOODWATCH_", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="Root of the image folders.", validate_default=True)
    model_dir: Path = Field(Path("./models"), description="Model registry: one folder a version.",
                            validate_default=True)
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; unset means SQLite at DATA_DIR/moodwatch.db."
    )
    broker_url: str | None = Field(
        None, description="Celery broker (redis://...); unset means an embedded Redis."
    )
    inbox: Path | None = Field(None, description="Folder watched for photos; default DATA_DIR/inbox.")
    max_file_bytes: int = Field(50 * 1024 * 1024, description="Larger files are rejected.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, description="Larger images are refused (bombs).")
    batch_size: int = Field(32, description="Images per classification job and per forward pass.")
    batch_wait: float = Field(0.5, description="Seconds the watcher waits to fill a batch.")
    settle_seconds: float = Field(1.0, description="A file must be unchanged this long to be read.")
    rescan_seconds: float = Field(180.0, description="Period of the inbox rescan that catches missed events.")
    resend_seconds: float = Field(
        600.0, description="A file sent this long ago with still no row is sent again by the rescan."
    )
    move_processed: bool = Field(True, description="Move classified files to DATA_DIR/processed/<label>.")
    move_rejected: bool = Field(True, description="Move rejected files to DATA_DIR/rejected.")
    # A batch takes seconds; what a worker may legitimately hold a job for longer is a retry's
    # or a hand-back's countdown (at most 30 s and 20 s). Two minutes clears those with room, and
    # a killed worker's batch goes to another within two minutes, not ten.
    visibility_timeout: int = Field(
        120, description="Seconds before a job taken by a worker that died is handed to another."
    )
    job_retries: int = Field(
        50, description="Retries of a job while the database is unreachable (backoff up to 30 s)."
    )
    worker_concurrency: int = Field(2, description="Worker processes started by `moodwatch worker`.")
    retrain_cron: str = Field("0 2 * * *", description="When the nightly retrain runs (cron, local time).")
    retrain_epochs: int = Field(60, description="Most epochs of a nightly retrain.")
    web_port: int = Field(8088, description="Port of the review page.")
    web_token: str | None = Field(
        None, description="Required on every request to the review page; must be set off loopback."
    )
    seed: int = Field(1337, description="Seed for splits and training.")
    detector_dir: Path | None = Field(
        None, description="Folder of the BlazeFace .tflite files; default models/detector beside the code."
    )

    @field_validator("data_dir", "model_dir", "inbox")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Relative to the folder a command runs in, once: jobs and children carry these paths.
        return None if value is None else value.expanduser().absolute()

    @field_validator("retrain_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        # Refused when read, so `moodwatch run` stops with the reason instead of a beat that
        # crashes in a loop.
        from moodwatch.queue import cron

        cron(value)
        return value

    @property
    def database(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'moodwatch.db').resolve()}"

    @property
    def inbox_dir(self) -> Path:
        return self.inbox if self.inbox is not None else self.data_dir / "inbox"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def processed_dir(self) -> Path:
        return self.data_dir / "processed"

    @property
    def rejected_dir(self) -> Path:
        return self.data_dir / "rejected"

    @property
    def embedded_redis_path(self) -> Path:
        return self.data_dir / ".redis" / "redis.db"


def child_env(settings: Settings, broker_url: str, **extra: str) -> dict[str, str]:
    """The environment of a child process (worker, watcher, beat, web) that must reach the same
    service as its parent: this process's environment with every location pinned, absolute, so
    a child started from any folder finds the same broker, database, folders and models."""
    return dict(
        os.environ,
        MOODWATCH_BROKER_URL=broker_url,
        MOODWATCH_DATABASE_URL=settings.database,
        MOODWATCH_DATA_DIR=str(settings.data_dir.resolve()),
        MOODWATCH_MODEL_DIR=str(settings.model_dir.resolve()),
        MOODWATCH_INBOX=str(settings.inbox_dir.resolve()),
        **extra,
    )


@lru_cache
def get_settings() -> Settings:
    """The settings of the service a command talks to: variables, then `moodwatch run`'s record."""
    from moodwatch.home import load_settings

    return load_settings()
