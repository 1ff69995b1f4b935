"""Model versions published in the database, for workers on machines without the model folders.

The trainer (and `moodwatch models publish`) packs a version's serving files into one tar
archive and stores it with its sha256 in the `model_publications` table; the version promoted
last is current. A worker with MOODWATCH_MODEL_SOURCE=database serves from a cache folder of its
own (MOODWATCH_MODEL_CACHE_DIR): before each look at its pointer it asks the database which
version is current, and fetches one it lacks, checks the archive's sha256 against the one
recorded at publication, unpacks it under a hidden name and renames it into place, then moves
the pointer. So the worker's ModelCache (worker.inference) hot-reloads it exactly as it follows a
promotion in the folders, and Keras loads it with safe_mode as always (moodwatch.modelio).

An archive whose hash does not match (changed in the database, cut short) is refused, said once
in the log, and the version already cached goes on serving. The database is the trust boundary:
whoever may write to it may publish a model, as they may already write every result.

It never imports TensorFlow: the CLI publishes without loading a model.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from moodwatch.files import write_atomic
from moodwatch.registry import CURRENT_FILE, MODEL_FILE, Registry, RegistryError, Version

if TYPE_CHECKING:
    from sqlalchemy.orm import sessionmaker

    from moodwatch.settings import Settings

log = logging.getLogger("moodwatch.publication")

# What a worker needs to serve a version: its files at the top of the folder. Its TensorBoard
# logs (a folder) and plots are the trainer's, and would triple the archive.
SKIPPED_SUFFIXES = (".png",)
FETCHING_PREFIX = ".fetching-"  # a version being unpacked into the cache (versions() passes it by)
MAX_ARCHIVE_BYTES = 2 * 1024**3  # a bound on what a worker unpacks: far above any version's size


class PublicationError(RuntimeError):
    """A version that cannot be published or fetched; the message says why, in one line."""


def serving_files(version: Version) -> list[Path]:
    return sorted(p for p in version.path.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix not in SKIPPED_SUFFIXES)


def pack(version: Version) -> bytes:
    """A version's serving files as one uncompressed tar (Keras files are zips already)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in serving_files(version):
            info = tarfile.TarInfo(path.name)
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0  # the same bytes every time
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return buffer.getvalue()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unpack(archive: bytes, target: Path) -> None:
    """Write an archive's files into the folder target. Only plain files with plain names are
    accepted: a link, a folder or a name with a slash would reach outside the version's folder."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for member in tar.getmembers():
            name = member.name
            if not member.isfile() or "/" in name or "\\" in name or name.startswith(".") or not name:
                raise PublicationError(f"the archive holds {name!r}, which is not a plain file of a version")
            source = tar.extractfile(member)
            if source is None:
                raise PublicationError(f"the archive's member {name!r} cannot be read")
            with open(target / name, "wb") as out:
                shutil.copyfileobj(source, out)


def publish(settings: Settings, sessions: sessionmaker, name: str | None = None,
            promote: bool | None = None) -> tuple[Version, bool]:
    """Publish a registry version (default: the current one). promote: make it the database's
    current version (default: when it is the registry's current). Returns it and promote."""
    from db.repository import publish_model

    registry = Registry.for_settings(settings)
    version = registry.get(name) if name else registry.require_current()
    if promote is None:
        promote = version.name == registry.current_name()
    archive = pack(version)
    with sessions.begin() as session:
        publish_model(session, version.name, archive, sha256_of(archive), promote)
    log.info("published model %s (%d bytes)%s", version.name, len(archive),
             ", now current for database-sourced workers" if promote else "")
    return version, promote


def publish_promotion(settings: Settings, version: Version) -> None:
    """Called right after a promotion (trainer.training): workers on other machines follow it.
    Not on SQLite, which no other machine can share: every process there reads the folders. A
    database that cannot take it leaves the promotion in the folders, and the log says how to
    publish it later; the training run is not undone for it."""
    from sqlalchemy.engine import make_url

    from db.migrate import open_database

    if make_url(settings.database).get_backend_name() == "sqlite":
        return
    try:
        publish(settings, open_database(settings.database), version.name, promote=True)
    except (SQLAlchemyError, OSError, PublicationError) as exc:
        log.warning("model %s is promoted here but not published to the database (%s): workers on "
                    "other machines keep the version they have; `moodwatch models publish` publishes it",
                    version.name, exc)


class PublishedRegistry(Registry):
    """The registry of a worker with MOODWATCH_MODEL_SOURCE=database: a cache folder that follows
    the database's current version. current() and require_current() first sync the cache (at
    most every `check_every` seconds), then read its pointer as any registry does."""

    def __init__(self, cache: Path, sessions: sessionmaker, check_every: float = 2.0):
        super().__init__(cache)
        self.sessions = sessions
        self.check_every = check_every
        self._synced_at = -float("inf")
        self._refused: set[tuple[str, str]] = set()  # (name, sha256) refused: said once, not retried
        self._problem: str | None = None  # the last reason the database could not be read

    def current(self) -> Version | None:
        self.sync()
        return super().current()

    def require_current(self) -> Version:
        self.sync()
        if self.current_name() is None:
            raise RegistryError(self._problem or "no model version is published in the database yet: "
                                "promote one, or run `moodwatch models publish` where the models are")
        return super().require_current()

    def sync(self, force: bool = False) -> str | None:
        """Bring the cache to the database's current version; returns the version in the cache's
        pointer. A failure (database down, archive refused) leaves the cache as it was."""
        now = time.monotonic()
        if force or now - self._synced_at >= self.check_every:
            self._synced_at = now
            try:
                self._sync()
                self._problem = None
            except (SQLAlchemyError, OSError) as exc:
                problem = f"cannot read the published model from the database: {exc.__class__.__name__}"
                if problem != self._problem:
                    log.warning("%s (%s); the cached version serves meanwhile", problem,
                                str(exc).splitlines()[0][:200] if str(exc) else "")
                self._problem = problem
        return self.current_name()

    def _sync(self) -> None:
        from db.repository import published_archive, published_current

        with self.sessions() as session:
            head = published_current(session)
        if head is None or head in self._refused:
            return
        name, sha = head
        if not (self.root / name / MODEL_FILE).is_file():
            with self.sessions() as session:
                found = published_archive(session, name)
            if found is None:  # removed between the two reads: the next sync sees what is current
                return
            try:
                self._install(name, sha, found[0])
            except PublicationError as exc:
                self._refused.add(head)
                log.error("refused the published model %s: %s; the cached version serves meanwhile",
                          name, exc)
                return
        if self.current_name() != name:
            write_atomic(self.root / CURRENT_FILE, name + "\n")
            log.info("model %s fetched from the database is now current here (%s)", name, self.root)

    def _install(self, name: str, sha: str, archive: bytes) -> None:
        """Check, unpack under a hidden name, rename into place: a reader never sees half a version."""
        if "/" in name or name.startswith(".") or not name.startswith("v"):
            raise PublicationError(f"{name!r} is not a version name")
        if len(archive) > MAX_ARCHIVE_BYTES:
            raise PublicationError(f"its archive is {len(archive)} bytes, more than {MAX_ARCHIVE_BYTES}")
        actual = sha256_of(archive)
        if actual != sha:
            raise PublicationError(f"its archive's sha256 is {actual}, not the {sha} recorded when it was "
                                   "published (changed or cut short in the database)")
        self.root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{FETCHING_PREFIX}{name}.", dir=self.root))
        try:
            try:
                unpack(archive, partial)
            except tarfile.TarError as exc:
                raise PublicationError(f"its archive cannot be read: {exc}") from exc
            if not (partial / MODEL_FILE).is_file():
                raise PublicationError(f"its archive has no {MODEL_FILE}")
            try:
                partial.rename(self.root / name)
            except OSError:
                if not (self.root / name / MODEL_FILE).is_file():  # else another process got there first
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)


def registry_for_worker(settings: Settings, sessions: sessionmaker) -> Registry:
    """The registry a worker serves from: the folders (MOODWATCH_MODEL_SOURCE=folder, the
    default) or the database's publications through a local cache."""
    if settings.model_source == "database":
        return PublishedRegistry(settings.model_cache, sessions)
    return Registry.for_settings(settings)
