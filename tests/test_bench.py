"""The bench: its faces-off pass reads the same version without its face models; its header
names the CPU; it prints the decode floor of the same run beside the end-to-end figure."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_faces_off_serves_the_whole_image_cnn_as_the_version_does(tmp_path: Path):
    """The shipped version's faces-off copy runs its whole-image CNN on LiteRT int8 as the
    faces-on pass does (not on Keras, which would make faces-off look slower than it is)."""
    from moodwatch.pipeline import Pipeline

    shipped = Registry(Path(__file__).resolve().parent.parent / "models")
    copy = Registry(whole_image_only(shipped, tmp_path / "scratch")).require_current()
    pipeline = Pipeline.load(copy.path)
    assert not pipeline.uses_faces
    assert (pipeline.runtime, pipeline.precision) == ("litert", "dynamic-int8")


def test_whole_image_version_needs_no_second_pass(tmp_path: Path):
    registry = make_version(tmp_path / "models", ["model.keras"])
    assert whole_image_only(registry, tmp_path / "scratch") is None


def test_cpu_description_names_the_model_and_amx():
    from benchmarks.throughput import cpu_description

    info = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name"))
    amx = any("amx_tile" in line.split() for line in info.splitlines() if line.startswith("flags"))
    assert cpu_description().startswith(model + ",")
    assert cpu_description().endswith(", AMX" if amx else ", no AMX")


def test_decode_floor_prepares_every_file_without_a_model(tmp_path: Path):
    """The floor runs the worker's own preprocessing (faces' detector input included) in its
    processes; an image the worker would refuse fails it instead of being counted."""
    from benchmarks.throughput import decode_floor
    from moodwatch.images import ImageRejected
    from tests.imagegen import face_like, write_image

    files = [write_image(tmp_path / f"{i}.jpg", face_like("happy", i)) for i in range(6)]
    assert decode_floor(files, 2, faces=True) > 0
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 64)
    with pytest.raises(ImageRejected):
        decode_floor([*files, tmp_path / "bad.jpg"], 1, faces=False)


@pytest.mark.slow
def test_a_real_bench_prints_the_cpu_and_the_decode_floor(tmp_path: Path, tiny_model_dir: Path,
                                                          redis_url: str):
    """A small `moodwatch bench` (real broker, worker processes, SQLite): its header names the
    CPU and its figures end with the decode floor of the same run and the ratio to it."""
    import re
    import subprocess
    import sys

    from benchmarks.throughput import cpu_description
    from tests.procs import ROOT, service_env

    env = service_env(broker_url=redis_url, model_dir=tiny_model_dir, data_dir=tmp_path / "data")
    out = subprocess.run([sys.executable, "-m", "moodwatch_app.cli", "bench", "--count", "16",
                          "-c", "2", "--batch", "4"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("bench: 16 images") and lines[1] == f"CPU: {cpu_description()}"
    floor = re.search(r"^decode floor: ([0-9.]+) images/s \(.*on 2 processes, no model\)$", out.stdout, re.M)
    assert floor and float(floor.group(1)) > 0, out.stdout
    e2e = float(re.search(r"^end-to-end: ([0-9.]+) images/s", out.stdout, re.M).group(1))
    ratio = re.search(r"^end-to-end / decode floor: ([0-9.]+)$", out.stdout, re.M)
    assert ratio and float(ratio.group(1)) == pytest.approx(e2e / float(floor.group(1)), abs=0.01)
