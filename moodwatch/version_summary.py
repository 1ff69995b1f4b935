"""Every model version as the listings show it: `moodwatch models` and the API's /api/models
read the registry through this one function, so they never disagree on a name or a figure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moodwatch.registry import Registry

# The headline test figures a table shows, in its order; metrics.json's "test" holds more.
FIGURES = ("accuracy", "precision", "recall", "f1", "ece")
ROW_COLUMNS = ("version", "current", "architecture", *FIGURES, "test_images")


@dataclass(frozen=True)
class VersionSummary:
    name: str
    architecture: str  # Version.architecture: "default+faces" when it reads faces too
    current: bool  # the version classifying new photos now
    test: dict[str, Any] | None  # its figures on its held-out test photos; None if unknown

    def figure(self, key: str) -> Any:
        return (self.test or {}).get(key)

    def row(self) -> dict[str, Any]:
        """The flat record of a table, a CSV line or `moodwatch models --json`."""
        return {"version": self.name, "current": self.current, "architecture": self.architecture,
                **{key: self.figure(key) for key in FIGURES}, "test_images": self.figure("n")}


@dataclass(frozen=True)
class Listing:
    current: str | None
    versions: list[VersionSummary]  # oldest first
    runs: list[dict[str, Any]]  # every training run, trained or skipped, oldest first


def list_versions(registry: Registry) -> Listing:
    current = registry.current_name()
    versions = [VersionSummary(v.name, v.architecture, v.name == current, v.metrics().get("test"))
                for v in registry.versions()]
    return Listing(current, versions, registry.runs())
