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
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from moodwatch.vocab import DEFAULT_MAX_PIXELS, LABELS

# Every number below is bounded, so a bad variable stops a command with its allowed range
# instead of a watcher spinning on batches of 0 or a port that cannot be bound.
MAX_BATCH_SIZE = 4096  # images in one forward pass: beyond this a batch no longer fits in memory
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit

class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOODWATCH_", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="Root of the image folders.", validate_default=True)
    model_dir: Path = Field(Path("./models"), description="Shipped model versions (read only).",
                            validate_default=True)
    local_model_dir: Path | None = Field(
        None, description="Versions trained here, the current pointer, runs.jsonl; default DATA_DIR/models."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; unset means SQLite at DATA_DIR/moodwatch.db."
    )
    broker_url: str | None = Field(
        None, description="Celery broker (redis://...); unset means an embedded Redis."
    )
    inbox: Path | None = Field(None, description="Folder watched for photos; default DATA_DIR/inbox.")
    max_file_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Larger files are rejected.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Larger images are refused (bombs).")
    batch_size: int = Field(32, ge=1, le=MAX_BATCH_SIZE,
                            description="Images per classification job and per forward pass.")
    batch_wait: float = Field(0.5, ge=0, le=3600, description="Seconds the watcher waits to fill a batch.")
    settle_seconds: float = Field(1.0, ge=0, le=86400,
                                  description="A file must be unchanged this long to be read.")
    rescan_seconds: float = Field(180.0, gt=0, le=86400,
                                  description="Period of the inbox rescan that catches missed events.")
    resend_seconds: float = Field(
        600.0, gt=0, description="A file sent this long ago with still no row is sent again by the rescan."
    )
    move_processed: bool = Field(True, description="Move classified files to DATA_DIR/processed/<label>.")
    move_rejected: bool = Field(True, description="Move rejected files to DATA_DIR/rejected.")
    keep_folders: bool = Field(True, description="A file from a folder in the inbox keeps that folder "
                               "under processed/<label>/ and rejected/ (false: all side by side).")
    # A batch takes seconds; what a worker may legitimately hold a job for longer is a retry's
    # or a hand-back's countdown (at most 30 s and 20 s). Two minutes clears those with room, and
    # a killed worker's batch goes to another within two minutes, not ten.
    visibility_timeout: int = Field(
        120, ge=1, description="Seconds before a job taken by a worker that died is handed to another."
    )
    job_retries: int = Field(
        50, ge=0, description="Retries of a job while the database is unreachable (backoff up to 30 s)."
    )
    # Measured on 2 cores: a batch of 32 photos of 12 MP decodes in 1.5 s, one of 32 at the pixel
    # limit (50 MP, 30 MB each) in about 4 s. A minute is fifteen times that, and keeps Celery's
    # own limits (this plus 30 s and 45 s, moodwatch.queue) below the visibility timeout.
    batch_time_limit: float = Field(
        60.0, ge=0.1, le=3600,
        description="Seconds a batch's decoding may take; a file still decoding then gets a `failed` row.",
    )
    worker_concurrency: int = Field(2, ge=1, le=256,
                                    description="Worker processes started by `moodwatch worker`.")
    retrain_cron: str = Field("0 2 * * *", description="When the nightly retrain runs (cron, local time).")
    retrain_epochs: int = Field(60, ge=1, le=10_000, description="Most epochs of a nightly retrain.")
    # README, nightly retraining: at 200 a class (about 100 test photos) a candidate right on 5 more
    # photos in 100 passes the paired test (p ~ 0.02); at 100 a class it cannot (p >= 0.125), and no
    # retrain of the shipped version on 150 a class or fewer was better on any check.
    retrain_min_per_class: int = Field(
        200, ge=5, le=1_000_000,
        description="Curated photos a class needed before the nightly retrain trains and promotes.",
    )
    web_port: int = Field(8088, ge=1, le=65535, description="Port of the review page.")
    web_token: str | None = Field(
        None, description="Required on every request to the review page; must be set off loopback."
    )
    web_allowed_hosts: str = Field(
        "", description="Comma-separated names the review page answers to besides its bound address."
    )
    seed: int = Field(1337, ge=0, le=MAX_SEED, description="Seed for splits and training.")
    cnn_precision: Literal["dynamic-int8", "float32"] = Field(
        "dynamic-int8",
        description="What the worker runs the CNNs in on LiteRT: dynamic-int8 (int8 weights, "
        "about twice as fast; a version has it only where it scored the version's test photos "
        "within 0.005 of the Keras models) or float32 (the Keras scores within 1e-4). A version "
        "without that conversion is served by the next one, float32, then Keras.")
    detector_dir: Path | None = Field(
        None, description="Folder of the BlazeFace .tflite files; default models/detector beside the code."
    )
    # README "More machines": shared, every process sees the inbox at the same path; broker, the
    # watcher sends each file's bytes through Redis and moves the files itself.
    transport: Literal["shared", "broker"] = Field(
        "shared", description="How a worker gets a file: `shared` reads its path, `broker` gets its "
        "bytes through Redis (workers on machines without the inbox)."
    )
    claim_ttl_seconds: int = Field(
        3600, ge=10, le=7 * 86400,
        description="Seconds a file's bytes wait in Redis for a worker (broker transport); "
        "an orphan then expires and the watcher sends the file again.",
    )
    max_inflight_bytes: int = Field(
        256 * 1024 * 1024, ge=1, le=64 * 1024**3,
        description="Bytes of files the watcher has in Redis at once (broker transport); it waits at this.",
    )
    max_inflight_jobs: int = Field(
        32, ge=1, le=100_000,
        description="Batch jobs the watcher has sent and not yet seen recorded (broker transport).",
    )
    # README, "Models on other machines": a worker with no shared disk takes its models from the
    # database, where promotion publishes them (moodwatch.publication).
    model_source: Literal["folder", "database"] = Field(
        "folder", description="Where a worker takes its model: the registry folders, or the database."
    )
    model_cache_dir: Path | None = Field(
        None, description="Where a database-sourced worker keeps the versions it fetched; default "
                          "DATA_DIR/model-cache."
    )

    @field_validator("data_dir", "model_dir", "inbox", "local_model_dir", "model_cache_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Relative to the folder a command runs in, once: jobs and children carry these paths.
        return None if value is None else value.expanduser().absolute()

    @field_validator("retrain_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        # Refused when read, so `moodwatch run` stops with the reason instead of a beat that
        # crashes in a loop.
        cron(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _valid_database_url(cls, value: str | None) -> str | None:
        # Refused when read: `moodwatch status` used to show a garbage URL as the database.
        if value:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                backend = make_url(value).get_backend_name()
            except ArgumentError:
                backend = None
            if backend not in DATABASE_BACKENDS:
                raise ValueError("not a database URL moodwatch can use: postgresql://user@host/name "
                                 "or sqlite:////absolute/path.db")
        return value

    @model_validator(mode="after")
    def _inbox_apart(self) -> Settings:
        problem = inbox_overlap(self)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _broker_needs_a_shared_database(self) -> Settings:
        # Workers on other machines write their rows there: a SQLite file lives on one machine.
        if self.transport == "broker" and self.database.startswith("sqlite"):
            raise ValueError("MOODWATCH_TRANSPORT=broker needs a database every machine reaches: set "
                             "MOODWATCH_DATABASE_URL=postgresql://... (SQLite is a file on one machine)")
        return self

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
    def user_model_dir(self) -> Path:
        """The user registry: everything training writes. Never MODEL_DIR, which git tracks."""
        return self.local_model_dir if self.local_model_dir is not None else self.data_dir / "models"

    @property
    def model_cache(self) -> Path:
        """A database-sourced worker's copies of published versions (moodwatch.publication)."""
        return self.model_cache_dir if self.model_cache_dir is not None else self.data_dir / "model-cache"

    @property
    def processed_dir(self) -> Path:
        return self.data_dir / "processed"

    @property
    def rejected_dir(self) -> Path:
        return self.data_dir / "rejected"

    @property
    def embedded_redis_path(self) -> Path:
        return self.data_dir / ".redis" / "redis.db"


DATABASE_BACKENDS = ("sqlite", "postgresql", "postgres")


def _folders_beside_the_inbox(settings: Settings) -> dict[str, Path]:
    """Folders the watcher must never empty: it moves every file it finds in the inbox."""
    return {
        "the data folder (MOODWATCH_DATA_DIR)": settings.data_dir,
        "the processed folder (DATA_DIR/processed)": settings.processed_dir,
        "the rejected folder (DATA_DIR/rejected)": settings.rejected_dir,
        "the quarantine folder (DATA_DIR/quarantine)": settings.quarantine_dir,
        **{f"the curated folder DATA_DIR/{label}": settings.data_dir / label for label in LABELS},
        "the model folder (MOODWATCH_MODEL_DIR)": settings.model_dir,
        "the user model folder (MOODWATCH_LOCAL_MODEL_DIR, default DATA_DIR/models)": settings.user_model_dir,
        "the model cache (MOODWATCH_MODEL_CACHE_DIR, default DATA_DIR/model-cache)": settings.model_cache,
    }


def inbox_overlap(settings: Settings) -> str | None:
    """Why the inbox may not be used, or None. It may lie inside the data folder (its default,
    DATA_DIR/inbox), but not be or contain any folder the service keeps, nor lie inside one but
    the data folder: the watcher would "reject" the live database, or eat the training data."""
    inbox = settings.inbox_dir.resolve()
    for name, folder in _folders_beside_the_inbox(settings).items():
        folder = folder.resolve()
        if folder.is_relative_to(inbox):
            how = "is" if folder == inbox else "contains"
        elif inbox.is_relative_to(folder) and folder != settings.data_dir.resolve():
            how = "lies inside"
        else:
            continue
        return (f"the inbox {inbox} (MOODWATCH_INBOX, default DATA_DIR/inbox) {how} {name} {folder}: "
                "the watcher moves every file out of the inbox, so give the inbox a folder of its own")
    return None


def allowed_range(field: str) -> str | None:
    """The bounds of a numeric setting in words ("at least 1 and at most 4096"), or None."""
    from annotated_types import Ge, Gt, Le, Lt

    info = Settings.model_fields.get(field)
    words = {Ge: ("ge", "at least"), Gt: ("gt", "more than"), Le: ("le", "at most"), Lt: ("lt", "less than")}
    parts = []
    for bound in info.metadata if info is not None else ():
        for kind, (attribute, text) in words.items():
            if isinstance(bound, kind):
                parts.append(f"{text} {getattr(bound, attribute)}")
    return " and ".join(parts) or None


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
        MOODWATCH_LOCAL_MODEL_DIR=str(settings.user_model_dir.resolve()),
        MOODWATCH_INBOX=str(settings.inbox_dir.resolve()),
        **extra,
    )


def cron(expression: str):
    """A Celery crontab from a five-field cron expression (minute hour day month weekday): the
    nightly retrain's schedule, checked when the settings are read."""
    from celery.schedules import crontab  # here: importing the settings loads no Celery

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression needs 5 fields, got {expression!r}")
    minute, hour, day, month, weekday = fields
    return crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month,
                   day_of_week=weekday)


@lru_cache
def get_settings() -> Settings:
    """The settings of the service a command talks to: variables, then `moodwatch run`'s record."""
    from moodwatch.home import load_settings

    return load_settings()
