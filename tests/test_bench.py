"""The bench's faces-off pass reads the same version without its face models."""

from __future__ import annotations

from pathlib import Path

from benchmarks.throughput import whole_image_only
from moodwatch.pipeline import CLOSE_UP_MODEL_FILE, FACE_MODEL_FILE, PIPELINE_FILE
from moodwatch.registry import Registry


def make_version(root: Path, files: list[str]) -> Registry:
    registry = Registry(root)
    version = registry.new_version_dir("default-faces")
    for name in files:
        (version.path / name).write_bytes(name.encode())
    registry.promote(version)
    return registry


def test_faces_off_copy_keeps_only_the_whole_image_model(tmp_path: Path):
    registry = make_version(tmp_path / "models", ["model.keras", PIPELINE_FILE, FACE_MODEL_FILE,
                                                  CLOSE_UP_MODEL_FILE])
    root = whole_image_only(registry, tmp_path / "scratch")
    assert root is not None
    copy = Registry(root).require_current()
    assert copy.name == registry.require_current().name
    assert sorted(p.name for p in copy.path.iterdir()) == sorted(["model.keras", PIPELINE_FILE])
    assert (copy.path / "model.keras").read_bytes() == b"model.keras"


def test_whole_image_version_needs_no_second_pass(tmp_path: Path):
    registry = make_version(tmp_path / "models", ["model.keras"])
    assert whole_image_only(registry, tmp_path / "scratch") is None
