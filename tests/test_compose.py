"""docker-compose.yml: valid, and every command in it is a real CLI command.

No Docker engine runs here; `docker-compose config` validates the file against the Compose
schema without one.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from moodwatch_app.cli import main
from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_file_validates():
    tool = shutil.which("docker-compose")
    if tool is None:
        missing("docker-compose (Debian package docker-compose) not installed; CI installs it with apt")
    env = dict(os.environ, MOODWATCH_WEB_TOKEN="x", POSTGRES_PASSWORD="x")  # both required
    out = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_production_stack_shape():
    services = _services()
    assert {"redis", "postgres", "watcher", "worker", "beat", "migrate"} <= set(services)
    for name in ("redis", "postgres"):
        assert "healthcheck" in services[name]
    assert any(v.startswith("postgres:") for v in services["postgres"]["volumes"])
    # A worker must scale: no fixed container name, no host ports.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    # The machine with the photos: the inbox (on `data`), the curated folders and the registry.
    for name in ("watcher", "trainer", "beat", "web", "publish"):
        vols = services[name]["volumes"]
        assert any(v.endswith(":/srv/moodwatch/data") for v in vols), name
        assert any(v.endswith(":/srv/moodwatch/models") for v in vols), name


def _config_services() -> dict:
    """The services as `docker compose up` sees them: anchors merged, variables interpolated."""
    tool = shutil.which("docker-compose")
    if tool is None:
        missing("docker-compose (Debian package docker-compose) not installed; CI installs it with apt")
    env = dict(os.environ, MOODWATCH_WEB_TOKEN="x", POSTGRES_PASSWORD="x")
    out = subprocess.run([tool, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)["services"]


def _targets(service: dict) -> set[str]:
    """Where a service's volumes are mounted: `source:target[:mode]` strings or long-form maps."""
    return {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service.get("volumes", [])}


def test_workers_share_no_disk_with_the_watcher():
    """`up --scale worker=N` starts workers that mount nothing: the photos come through Redis, the
    model from the database. Only the inbox's machine (the watcher's volumes) runs the retrain."""
    services = _config_services()
    worker = services["worker"]
    assert not worker.get("volumes"), worker.get("volumes")
    env = worker["environment"]
    assert env["MOODWATCH_TRANSPORT"] == "broker"
    assert env["MOODWATCH_MODEL_SOURCE"] == "database"
    assert env["MOODWATCH_DATABASE_URL"].startswith("postgresql://")  # broker refuses SQLite
    # Nothing may be served from the image's copy of the shipped model by mistake.
    assert env["MOODWATCH_MODEL_DIR"] != "/srv/moodwatch/models"
    assert env["MOODWATCH_MODEL_CACHE_DIR"] != services["watcher"]["environment"]["MOODWATCH_DATA_DIR"]
    command = worker["command"]
    assert command[command.index("-Q") + 1] == "classify"  # no retrain lands where no curated photos are
    assert "publish" in worker["depends_on"]  # the shipped model is in the database before they start
    # Everyone sends and receives the bytes the same way.
    for name in ("watcher", "worker", "trainer", "web"):
        assert services[name]["environment"]["MOODWATCH_TRANSPORT"] == "broker", name
    # The inbox is mounted by the services of the inbox's machine alone.
    data_mounts = {name for name, s in services.items() if "/srv/moodwatch/data" in _targets(s)}
    assert data_mounts == {"watcher", "trainer", "beat", "web", "publish"}
    trainer = services["trainer"]["command"]
    assert trainer[trainer.index("-Q") + 1] == "training"
    assert services["publish"]["command"] == ["moodwatch", "models", "publish"]


def test_the_base_image_is_a_build_argument():
    """Where no registry is reachable, a local base image builds the same Dockerfile
    (benchmarks/compose_run.sh makes one with debootstrap)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    assert "ARG BASE=python:3.11-slim" in lines[:first]
    assert lines[first] == "FROM ${BASE}"
    build = yaml.safe_load(COMPOSE.read_text())["x-moodwatch"]["build"]
    assert build["args"]["BASE"] == "${MOODWATCH_BASE_IMAGE:-python:3.11-slim}"


@pytest.mark.parametrize("service", ["migrate", "publish", "watcher", "worker", "trainer", "beat", "web"])
def test_every_command_is_a_real_cli_command(service):
    command = _services()[service]["command"]
    assert command[0] == "moodwatch"
    # --help after the real arguments: click parses the command path and its options.
    result = CliRunner().invoke(main, [*command[1:], "--help"])
    assert result.exit_code == 0, result.output


def _make_dry_run(target: str) -> str:
    if shutil.which("make") is None:
        missing("make is not installed")
    # -B: as if nothing were installed yet; -n: print the commands, run none.
    out = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_run_installs_the_runtime_only_and_make_test_the_dev_tools():
    run = _make_dry_run("run")
    assert re.search(r"pip .*install -e \.\n", run) and "[dev" not in run and "face-training" not in run
    test = _make_dry_run("test")
    assert "[dev,face-training]" in test  # the face-model trainer's tests need PyTorch


def test_docker_build_context_leaves_out_the_virtualenv_and_runtime_state():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "data"} <= ignored
    copied = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")]
    assert not any(src.rstrip("/") in ignored for src in copied), "the Dockerfile copies an ignored path"


def _dockerfile_copies() -> list[tuple[list[str], str]]:
    """Each COPY of the Dockerfile (continuation lines joined) as (sources, destination)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    copies = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--") for w in words):
            copies.append((words[1:-1], words[-1]))
    return copies


def _docker_ignores(path: str) -> bool:
    """.dockerignore's verdict on a path of the context: the last pattern that matches it or one
    of the folders above it wins; `!` patterns take a path back in."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.removeprefix("**/"))
               for p in prefixes):
            ignored = not negated
    return ignored


def _shipped() -> dict:
    return json.loads((ROOT / "models" / "shipped.json").read_text())


def test_the_image_gets_the_shipped_current_version_only():
    """Versions trained on the building machine stay out of the image and of the build context;
    the shipped current version, the face CNN it started from and the detector go in."""
    shipped = _shipped()
    sources = [src.rstrip("/") for srcs, _ in _dockerfile_copies() for src in srcs]
    assert "models" not in sources  # the whole folder brought every local version along
    versions = [s for s in sources if s.startswith("models/v")]
    assert versions == [f"models/{shipped['current']}"]
    for needed in ("models/detector", "models/face-fer2013.keras", "models/face-fer2013.provenance.txt",
                   "models/shipped.json"):
        assert needed in sources, needed
    for src in sources:
        assert not _docker_ignores(src), f"the Dockerfile copies {src}, which .dockerignore leaves out"
    older = [f"models/{v}" for v in shipped["versions"] if v != shipped["current"]]
    for left_out in ("models/v20990101T020000000000-default-faces/model.keras", "models/runs.jsonl",
                     "models/.current.tmp", *older):
        assert _docker_ignores(left_out), left_out
    assert not _docker_ignores(f"models/{shipped['current']}/model.keras")


def test_shipped_json_lists_the_tracked_versions():
    """It is how migration tells a shipped version from one trained here: it must name every
    version git tracks, and the pointer git tracks."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        missing("git, and the project's git checkout, are needed")
    tracked = subprocess.run(["git", "ls-files", "models"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    tracked_versions = {p.split("/")[1] for p in tracked if p.startswith("models/v")}
    shipped = _shipped()
    assert set(shipped["versions"]) == tracked_versions
    assert shipped["current"] in tracked_versions
    head = subprocess.run(["git", "show", "HEAD:models/current"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert head.stdout.strip() == shipped["current"]
