"""The production compose file holds no database password: it comes from POSTGRES_PASSWORD, and
the stack refuses to start without it (as it does without MOODWATCH_WEB_TOKEN).

`docker-compose config` interpolates the variables the way `up` does, without a Docker engine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SECRETS = ("POSTGRES_PASSWORD", "MOODWATCH_WEB_TOKEN")


def _config(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    tool = shutil.which("docker-compose")
    if tool is None:
        missing("docker-compose (Debian package docker-compose) not installed; CI installs it with apt")
    env = {k: v for k, v in os.environ.items() if k not in SECRETS} | variables
    empty = tmp_path / "empty.env"  # an .env file of a developer's must not supply the secrets
    empty.write_text("")
    return subprocess.run([tool, "-f", str(COMPOSE), "--env-file", str(empty), "config"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)


def test_the_stack_refuses_to_start_without_a_database_password(tmp_path):
    out = _config(tmp_path, MOODWATCH_WEB_TOKEN="t" * 32)
    assert out.returncode != 0
    assert "set POSTGRES_PASSWORD" in out.stderr


def test_the_password_reaches_postgres_and_every_database_url(tmp_path):
    secret = "s3cr3tf0rt3st1ng"
    out = _config(tmp_path, MOODWATCH_WEB_TOKEN="t" * 32, POSTGRES_PASSWORD=secret)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == secret
    urls = {name: s["environment"]["MOODWATCH_DATABASE_URL"] for name, s in services.items()
            if "MOODWATCH_DATABASE_URL" in s.get("environment", {})}
    assert {"migrate", "watcher", "worker", "beat", "web"} <= set(urls)
    assert all(url == f"postgresql://moodwatch:{secret}@postgres:5432/moodwatch" for url in urls.values())


def test_no_password_is_written_in_the_file():
    text = COMPOSE.read_text()
    services = yaml.safe_load(text)["services"]
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?"), password
    # Every URL's password part is the variable, never a literal.
    for user_password in re.findall(r"postgresql://([^@\s]+)@", text):
        assert user_password.partition(":")[2].startswith("${POSTGRES_PASSWORD:?"), user_password
    assert "moodwatch:moodwatch@" not in text
