"""Clean the curated class folders: dodgy files are moved to quarantine, never deleted."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from moodwatch.admission import DEFAULT_MAX_BYTES, Limits
from moodwatch.curation import training_photo
from moodwatch.files import move_no_clobber
from moodwatch.images import ImageRejected
from moodwatch.vocab import LABELS

# Hidden files and OS clutter are not a user's photos; they are left alone, not quarantined.
IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "README.md"})


@dataclass
class CleanReport:
    kept: dict[str, int] = field(default_factory=dict)
    quarantined: list[tuple[str, str, str]] = field(default_factory=list)  # from, to, reason
    files: list[tuple[Path, str]] = field(default_factory=list)  # the fit files and their labels

    def summary(self) -> str:
        kept = ", ".join(f"{label}: {n}" for label, n in self.kept.items())
        return f"kept {kept}; quarantined {len(self.quarantined)}"


def unusable_reason(path: Path, max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    """The reason a curated file is unfit for training, or None when it is fine
    (moodwatch.curation.training_photo: the admission's checks, then a whole decode)."""
    try:
        training_photo(path, Limits(max_bytes, max_pixels))
    except ImageRejected as exc:
        return exc.reason
    return None


def _ensure_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def clean_folders(data_dir: Path, quarantine_dir: Path, max_pixels: int,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> CleanReport:
    """Check every file under data_dir/<label>/; move the unfit ones to quarantine_dir/<label>/."""
    report = CleanReport()
    log_path = quarantine_dir / "reasons.jsonl"
    for label in LABELS:
        folder = data_dir / label
        kept = 0
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.name in IGNORED_NAMES or (path.is_dir() and not path.is_symlink()):
                    continue
                reason = unusable_reason(path, max_pixels, max_bytes)
                if reason is None:
                    kept += 1
                    report.files.append((path, label))
                    continue
                try:
                    dest = str(move_no_clobber(path, quarantine_dir / label))
                except OSError as exc:  # a read-only data set: leave it, but never train on it
                    dest = f"(left in place: {exc.strerror or exc})"
                report.quarantined.append((str(path), dest, reason))
                with contextlib.suppress(OSError), open(_ensure_parent(log_path), "a") as fh:
                    entry = {
                        "at": datetime.now(UTC).isoformat(),
                        "from": str(path),
                        "to": dest,
                        "reason": reason,
                    }
                    fh.write(json.dumps(entry) + "\n")
        report.kept[label] = kept
    return report
