"""The model registry: a folder per version and a ``current`` pointer file, in two places.

MODEL_DIR (``./models`` in a clone) holds the versions that ship with the code and their pointer,
listed in ``shipped.json``; it is tracked by git (or copied into the image) and code never writes
to it. Versions trained here, the user's ``current`` pointer and ``runs.jsonl`` live in the user
registry (MOODWATCH_LOCAL_MODEL_DIR, default DATA_DIR/models). A registry reads both: the
versions of both, and the user's pointer when there is one, else the shipped one. So a retrain
leaves ``git status`` clean, and a new shipped version reaches a user who never promoted one.

It knows only files and JSON, never TensorFlow, so the watcher and the CLI can read it cheaply.
Every write is atomic (write a temporary file, then rename), so a worker that reads the
pointer while the trainer promotes sees either the old version or the new one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moodwatch.files import write_atomic

if TYPE_CHECKING:
    from moodwatch.settings import Settings

log = logging.getLogger("moodwatch.registry")

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.json"
CURRENT_FILE = "current"
RUNS_FILE = "runs.jsonl"
SHIPPED_FILE = "shipped.json"  # in MODEL_DIR: {"current": name, "versions": [names]}
MIGRATING_PREFIX = ".migrating-"  # a version folder being copied into the user registry


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class Version:
    name: str
    path: Path

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def metrics(self) -> dict[str, Any]:
        return read_json(self.path / METRICS_FILE)

    def params(self) -> dict[str, Any]:
        return read_json(self.path / PARAMS_FILE)

    @property
    def architecture(self) -> str:
        """One name everywhere (CLI, review page, API): e.g. "default+faces" when it uses faces."""
        params = self.params()
        return (params.get("architecture") or "?") + ("+faces" if params.get("faces") else "")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def is_version_dir(path: Path) -> bool:
    return path.is_dir() and path.name.startswith("v") and (path / MODEL_FILE).is_file()


def read_pointer(path: Path) -> str | None:
    try:
        name = path.read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


def shipped_manifest(base: Path) -> dict[str, Any] | None:
    """MODEL_DIR/shipped.json, or None where there is none (a folder older releases wrote)."""
    data = read_json(base / SHIPPED_FILE)
    if not isinstance(data.get("current"), str) or not isinstance(data.get("versions"), list):
        return None
    return data


class Registry:
    """root: the user registry, where every write goes. base: the shipped folder, read only (None:
    one folder that is both, as a test's or a benchmark's scratch registry)."""

    def __init__(self, root: Path, base: Path | None = None):
        self.root = Path(root)
        same = base is None or Path(base).absolute() == self.root.absolute()
        self.base: Path | None = None if same else Path(base)

    @classmethod
    def for_settings(cls, settings: Settings, migrate: bool = False) -> Registry:
        """The registry of a service. migrate: first move what an older release wrote into
        MODEL_DIR into the user registry (`moodwatch run`, `train` and `retrain` do)."""
        registry = cls(settings.user_model_dir, base=settings.model_dir)
        if migrate:
            registry.migrate_legacy()
        return registry

    @property
    def folders(self) -> list[Path]:
        """Where versions are looked for, the user registry first (it wins on a shared name)."""
        return [self.root] + ([self.base] if self.base is not None else [])

    def describe(self) -> str:
        """Both folders, the shipped one first, for messages."""
        return " and ".join(str(f) for f in reversed(self.folders))

    def versions(self) -> list[Version]:
        found: dict[str, Version] = {}
        for folder in reversed(self.folders):  # the user registry last: its folder wins
            if folder.is_dir():
                found.update({p.name: Version(p.name, p) for p in folder.iterdir() if is_version_dir(p)})
        return sorted(found.values(), key=lambda v: v.name)

    def get(self, name: str) -> Version:
        if "/" in name or name.startswith("."):
            raise RegistryError(f"no model version {name!r} in {self.describe()}")
        # The user registry first: a migration makes a version whole there before it removes
        # the shipped folder's copy, so a reader in between finds it in one or the other.
        for folder in self.folders:
            if ((folder / name) / MODEL_FILE).is_file():
                return Version(name, folder / name)
        raise RegistryError(f"no model version {name!r} in {self.describe()}")

    @property
    def pointer_path(self) -> Path:
        """The pointer in effect: the user's when there is one, else the shipped one."""
        user = self.root / CURRENT_FILE
        if self.base is None or read_pointer(user) is not None:
            return user
        return self.base / CURRENT_FILE

    def current_name(self) -> str | None:
        return read_pointer(self.pointer_path)

    def current(self) -> Version | None:
        name = self.current_name()
        return self.get(name) if name else None

    def require_current(self) -> Version:
        version = self.current()
        if version is None:
            raise RegistryError(
                f"no current model in {self.describe()}: train one with `moodwatch train`"
            )
        return version

    def new_version_dir(self, tag: str) -> Version:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"v{stamp}-{tag}"
        path = self.root / name
        path.mkdir(parents=True, exist_ok=False)
        return Version(name, path)

    def promote(self, version: Version) -> None:
        write_atomic(self.root / CURRENT_FILE, version.name + "\n")

    def record_run(self, entry: dict[str, Any]) -> None:
        """Append one training run (trained or skipped) to the run log."""
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"at": datetime.now(UTC).isoformat(), **entry}
        with open(self.root / RUNS_FILE, "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")

    def runs(self) -> list[dict[str, Any]]:
        try:
            lines = (self.root / RUNS_FILE).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def migrate_legacy(self) -> list[str]:
        """Move what releases before the user registry wrote into MODEL_DIR to the user registry:
        local version folders (those shipped.json does not list), runs.jsonl, and a `current`
        that names anything but the shipped current (MODEL_DIR/current then names the shipped
        one again, so `git status` is clean). The pointer moves last, so a crash at any step
        leaves a registry that serves the same version, and a rerun finishes the move.

        Returns what it did (nothing on a second call). Without shipped.json it cannot tell
        local from shipped and leaves MODEL_DIR as it is; so does a MODEL_DIR it cannot write.
        """
        base = self.base
        manifest = shipped_manifest(base) if base is not None and base.is_dir() else None
        if base is None or manifest is None:
            return []
        done: list[str] = []
        try:
            shipped = set(manifest["versions"])
            for path in sorted(base.iterdir()):
                if is_version_dir(path) and path.name not in shipped:
                    self._move_version(path)
                    done.append(f"version {path.name}")
            if self._move_runs(base / RUNS_FILE):
                done.append(RUNS_FILE)
            if self._move_pointer(base / CURRENT_FILE, manifest["current"]):
                done.append(f"{CURRENT_FILE} ({self.current_name()})")
        except OSError as exc:
            log.warning("could not move local models from %s to %s (%s); they are used where they are",
                        base, self.root, exc)
        if done:
            log.warning("moved what this machine trained out of the shipped folder %s into %s: %s",
                        base, self.root, ", ".join(done))
        return done

    def _move_version(self, source: Path) -> None:
        """Copy whole under a hidden name, rename into place, then remove the source: the two
        folders may be on different filesystems (Docker volumes), where a rename cannot cross."""
        target = self.root / source.name
        if not target.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            # Its own hidden name (versions() passes it by): two first starts at once never
            # share a half-made copy.
            partial = Path(tempfile.mkdtemp(prefix=MIGRATING_PREFIX + source.name + ".", dir=self.root))
            try:
                shutil.copytree(source, partial, symlinks=True, dirs_exist_ok=True)
                partial.rename(target)  # refused if another process got there first: theirs stays
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(source)

    def _move_runs(self, legacy: Path) -> bool:
        try:
            old = legacy.read_text()
        except FileNotFoundError:
            return False
        if old and not old.endswith("\n"):
            old += "\n"
        try:
            ours = (self.root / RUNS_FILE).read_text()
        except FileNotFoundError:
            ours = ""
        if not ours.startswith(old):  # else a crash came after this write: do not log them twice
            write_atomic(self.root / RUNS_FILE, old + ours)  # the older runs first
        legacy.unlink()
        return True

    def _move_pointer(self, legacy: Path, shipped_current: str) -> bool:
        name = read_pointer(legacy)
        if name is None or name == shipped_current:
            return False
        if read_pointer(self.root / CURRENT_FILE) is None:
            write_atomic(self.root / CURRENT_FILE, name + "\n")
        write_atomic(legacy, shipped_current + "\n")
        return True
