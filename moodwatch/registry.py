"""The model registry: a folder per version under MODEL_DIR and a ``current`` pointer file.

It knows only files and JSON, never TensorFlow, so the watcher and the CLI can read it cheaply.
Every write is atomic (write a temporary file, then rename), so a worker that reads the
pointer while the trainer promotes sees either the old version or the new one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moodwatch.files import write_atomic

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.json"
CURRENT_FILE = "current"
RUNS_FILE = "runs.jsonl"


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


class Registry:
    def __init__(self, root: Path):
        self.root = Path(root)

    def versions(self) -> list[Version]:
        if not self.root.is_dir():
            return []
        found = [
            Version(p.name, p)
            for p in self.root.iterdir()
            if p.is_dir() and p.name.startswith("v") and (p / MODEL_FILE).is_file()
        ]
        return sorted(found, key=lambda v: v.name)

    def get(self, name: str) -> Version:
        path = self.root / name
        if "/" in name or name.startswith(".") or not (path / MODEL_FILE).is_file():
            raise RegistryError(f"no model version {name!r} in {self.root}")
        return Version(name, path)

    def current_name(self) -> str | None:
        try:
            name = (self.root / CURRENT_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return name or None

    def current(self) -> Version | None:
        name = self.current_name()
        return self.get(name) if name else None

    def require_current(self) -> Version:
        version = self.current()
        if version is None:
            raise RegistryError(
                f"no current model in {self.root}: train one with `moodwatch train`"
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
