"""docker-compose.yml: valid, and every command in it is a real CLI command.

No Docker engine runs here; `docker-compose config` validates the file against the Compose
schema without one.
"""

from __future__ import annotations

import os
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
    env = dict(os.environ, MOODWATCH_WEB_TOKEN="x")
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
    for name in ("watcher", "worker", "beat"):
        vols = services[name]["volumes"]
        assert any(v.endswith(":/srv/moodwatch/data") for v in vols)
        assert any(v.endswith(":/srv/moodwatch/models") for v in vols)


@pytest.mark.parametrize("service", ["migrate", "watcher", "worker", "beat", "web"])
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
    assert "pip install --quiet -e ." in run and "[dev" not in run and "face-training" not in run
    test = _make_dry_run("test")
    assert "[dev,face-training]" in test  # the face-model trainer's tests need PyTorch


def test_docker_build_context_leaves_out_the_virtualenv_and_runtime_state():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "data"} <= ignored
    copied = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")]
    assert not any(src.rstrip("/") in ignored for src in copied), "the Dockerfile copies an ignored path"
