"""The user registry: training writes under DATA_DIR/models, never into the tracked models/.

Before, promote() wrote models/current, a tracked file, so every retrain left `git status`
showing it modified (and a `git pull` could conflict). The clones here are small git
repositories with the project's own .gitignore and the shipped layout of models/ (a version is a
folder with a model.keras: the registry never loads one, only the worker test does).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from moodwatch.registry import CURRENT_FILE, RUNS_FILE, SHIPPED_FILE, Registry
from moodwatch.settings import Settings, child_env
from tests.conftest import missing
from tests.procs import ROOT

SHIPPED = "v20260101T000000000000-default-faces"
OLD_SHIPPED = "v20250101T000000000000-default"
LOCAL = "v20260301T020000000000-default-faces"  # what an older release trained into models/


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def _version(folder: Path, name: str) -> Path:
    path = folder / name
    path.mkdir(parents=True)
    (path / "model.keras").write_bytes(b"weights of " + name.encode())
    (path / "params.json").write_text(json.dumps({"architecture": "default"}))
    return path


@pytest.fixture
def clone(tmp_path) -> Path:
    """A committed checkout laid out as the project is: the real .gitignore, models/ with two
    shipped versions, shipped.json and current, data/README.md."""
    if shutil.which("git") is None:
        missing("git is not installed")
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy2(ROOT / ".gitignore", repo / ".gitignore")
    models = repo / "models"
    for name in (OLD_SHIPPED, SHIPPED):
        _version(models, name)
    (models / CURRENT_FILE).write_text(SHIPPED + "\n")
    (models / SHIPPED_FILE).write_text(json.dumps({"current": SHIPPED, "versions": [OLD_SHIPPED, SHIPPED]}))
    (models / "README.md").write_text("models\n")
    (repo / "data").mkdir()
    (repo / "data" / "README.md").write_text("data\n")
    _git(repo, "init", "-q")
    # -f: the shipped versions are committed past `models/*`, as the project's are.
    _git(repo, "add", "-f", ".gitignore", "data/README.md", "models")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "shipped")
    assert _git(repo, "status", "--porcelain") == ""
    return repo


def _settings(repo: Path) -> Settings:
    return Settings(data_dir=repo / "data", model_dir=repo / "models")


def test_training_writes_no_tracked_file(clone):
    registry = Registry.for_settings(_settings(clone))
    assert registry.current_name() == SHIPPED  # no pointer of the user's yet: the shipped one
    version = registry.new_version_dir("default-faces")
    (version.path / "model.keras").write_bytes(b"new weights")
    registry.promote(version)
    registry.record_run({"version": version.name, "outcome": "promoted"})

    assert _git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    assert version.path.parent == clone / "data" / "models"
    assert (clone / "models" / CURRENT_FILE).read_text().strip() == SHIPPED
    again = Registry.for_settings(_settings(clone))
    assert again.current_name() == version.name
    assert [v.name for v in again.versions()] == [OLD_SHIPPED, SHIPPED, version.name]
    assert again.get(SHIPPED).path == clone / "models" / SHIPPED  # shipped ones are read in place
    assert [r["outcome"] for r in again.runs()] == ["promoted"]


def test_the_user_registry_can_be_put_elsewhere_and_children_agree(clone, tmp_path):
    settings = Settings(data_dir=clone / "data", model_dir=clone / "models",
                        local_model_dir=tmp_path / "mine")
    assert _settings(clone).user_model_dir == clone / "data" / "models"
    assert Registry.for_settings(settings).new_version_dir("x").path.parent == tmp_path / "mine"
    env = child_env(settings, "redis://127.0.0.1:1/0")
    assert env["MOODWATCH_LOCAL_MODEL_DIR"] == str((tmp_path / "mine").resolve())


def _old_layout(repo: Path, runs: list[dict]) -> None:
    """What a release before the user registry left: its version, pointer and run log in models/."""
    _version(repo / "models", LOCAL)
    (repo / "models" / CURRENT_FILE).write_text(LOCAL + "\n")
    (repo / "models" / RUNS_FILE).write_text("".join(json.dumps(r) + "\n" for r in runs))


def test_migration_keeps_the_current_version_and_leaves_git_clean(clone, caplog):
    runs = [{"outcome": "promoted", "version": LOCAL}, {"outcome": "skipped", "reason": "unchanged"}]
    _old_layout(clone, runs)
    assert _git(clone, "status", "--porcelain") == " M models/current\n"
    before = Registry.for_settings(_settings(clone))
    assert before.current_name() == LOCAL  # the old layout serves as it did

    with caplog.at_level(logging.INFO, logger="moodwatch.registry"):
        registry = Registry.for_settings(_settings(clone), migrate=True)
        assert Registry.for_settings(_settings(clone), migrate=True).migrate_legacy() == []
    moved = [r for r in caplog.records if "moved" in r.getMessage()]
    assert len(moved) == 1 and LOCAL in moved[0].getMessage()  # said once, not on every start

    assert _git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    assert registry.current_name() == LOCAL
    assert registry.current().path == clone / "data" / "models" / LOCAL
    assert (registry.current().model_path).read_bytes() == b"weights of " + LOCAL.encode()
    assert not (clone / "models" / LOCAL).exists() and not (clone / "models" / RUNS_FILE).exists()
    assert (clone / "models" / CURRENT_FILE).read_text().strip() == SHIPPED
    assert registry.runs() == runs
    assert [v.name for v in registry.versions()] == [OLD_SHIPPED, SHIPPED, LOCAL]


def test_migration_finishes_what_a_crash_interrupted(clone):
    """Killed after the version was copied and the user's pointer written, before the shipped
    folder was cleaned up: the next start finishes, with no run logged twice."""
    runs = [{"outcome": "promoted", "version": LOCAL}]
    _old_layout(clone, runs)
    user = clone / "data" / "models"
    shutil.copytree(clone / "models" / LOCAL, user / LOCAL)
    (user / CURRENT_FILE).write_text(LOCAL + "\n")
    (user / RUNS_FILE).write_text(json.dumps(runs[0]) + "\n" + json.dumps({"outcome": "skipped"}) + "\n")
    registry = Registry.for_settings(_settings(clone))
    assert registry.current().path == user / LOCAL  # the user's copy wins while both exist

    registry.migrate_legacy()
    assert _git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    assert registry.current_name() == LOCAL
    assert [r["outcome"] for r in registry.runs()] == ["promoted", "skipped"]
    assert not (clone / "models" / LOCAL).exists()


def test_migration_leaves_a_user_who_kept_the_shipped_model_on_it(clone):
    """Only the run log and local versions move; with models/current unchanged there is no
    pointer of the user's, so a later shipped version still reaches them."""
    _version(clone / "models", LOCAL)  # trained, not promoted
    registry = Registry.for_settings(_settings(clone), migrate=True)
    assert not (clone / "data" / "models" / CURRENT_FILE).exists()
    assert registry.current_name() == SHIPPED
    assert registry.get(LOCAL).path == clone / "data" / "models" / LOCAL


def test_no_shipped_list_no_migration(tmp_path):
    """A MODEL_DIR without shipped.json (a Docker volume an older image filled): local and
    shipped cannot be told apart, so nothing moves; every version there still serves."""
    models = tmp_path / "models"
    _version(models, LOCAL)
    (models / CURRENT_FILE).write_text(LOCAL + "\n")
    registry = Registry.for_settings(Settings(data_dir=tmp_path / "data", model_dir=models), migrate=True)
    assert (models / LOCAL).is_dir() and registry.current().path == models / LOCAL


def test_the_worker_model_cache_follows_the_user_pointer(tmp_path, tiny_model_dir):
    from worker.inference import ModelCache

    models, user = tmp_path / "models", tmp_path / "data" / "models"
    shutil.copytree(tiny_model_dir, models)
    shipped = Registry(models).require_current().name
    registry = Registry.for_settings(Settings(data_dir=tmp_path / "data", model_dir=models))
    cache = ModelCache(registry, batch_size=4, check_every=0)
    assert cache.get().version.name == shipped

    mine = "v29990101T000000000000-default"
    shutil.copytree(models / shipped, user / mine)
    registry.promote(registry.get(mine))
    assert cache.get().version.path == user / mine  # followed the user's pointer

    (user / CURRENT_FILE).unlink()  # no pointer of the user's: back to the shipped one
    assert cache.get().version.name == shipped
