"""Every command on bad input: one line starting with `error:`, exit code 1, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from moodwatch import settings as settings_module
from moodwatch_app.cli import main
from tests.test_cli import _commands

Case = Callable[[Path], tuple[list[str], dict[str, str], str]]


def _pdf(tmp: Path) -> Path:
    (tmp / "doc.pdf").write_bytes(b"%PDF-1.4\n" + b"0" * 200)
    return tmp / "doc.pdf"


def _empty(tmp: Path) -> Path:
    (tmp / "empty.jpg").write_bytes(b"")
    return tmp / "empty.jpg"


def _a_file(tmp: Path) -> Path:
    (tmp / "plain-file").write_text("not a folder")
    return tmp / "plain-file"


# command -> (arguments, environment, a phrase the one line must contain)
BAD_INPUT: dict[str, Case] = {
    "train": lambda t: (["train", "--data", str(t / "nope")], {}, "does not exist"),
    "models": lambda t: (["models"], {"MOODWATCH_MODEL_DIR": str(_a_file(t))}, "not a folder"),
    "models publish": lambda t: (["models", "publish", "vnope"], {}, "no model version 'vnope'"),
    "classify": lambda t: (["classify", str(_pdf(t))], {}, "no current model"),
    "evaluate": lambda t: (["evaluate", "--data", str(t / "nope")], {}, "does not exist"),
    "db upgrade": lambda t: (["db", "upgrade"], {"MOODWATCH_DATABASE_URL": "nonsense"}, "database URL"),
    "results": lambda t: (["results", "--since", "yesterday-ish"], {}, "--since"),
    "stats": lambda t: (["stats"], {"MOODWATCH_DATABASE_URL": f"sqlite:///{_a_file(t)}"},
                        "file is not a database"),
    "worker": lambda t: (["worker"], {"MOODWATCH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"},
                         "database"),
    "bench": lambda t: (["bench", "--images", str(t / "nope")], {}, "--images"),
    "watch": lambda t: (["watch"], {"MOODWATCH_INBOX": str(_a_file(t))}, "not a folder"),
    "submit": lambda t: (["submit", str(t / "missing.jpg")], {}, "no such file or folder"),
    "status": lambda t: (["status"], {"MOODWATCH_WEB_PORT": "http"}, "MOODWATCH_WEB_PORT"),
    "run": lambda t: (["run"], {"MOODWATCH_RETRAIN_CRON": "every minute"}, "MOODWATCH_RETRAIN_CRON"),
    "beat": lambda t: (["beat"], {"MOODWATCH_RETRAIN_CRON": "61 * * * *"}, "MOODWATCH_RETRAIN_CRON"),
    "retrain": lambda t: (["retrain", "--epochs", "0"], {}, "--epochs"),
    "label": lambda t: (["label", str(_pdf(t)), "happy"], {}, "file type '.pdf' is not accepted"),
    "web": lambda t: (["web", "--host", "0.0.0.0"], {"MOODWATCH_WEB_TOKEN": ""}, "MOODWATCH_WEB_TOKEN"),
}
EXTRA: dict[str, Case] = {
    "label empty file": lambda t: (["label", str(_empty(t)), "sad"], {}, "empty file"),
    "label missing file": lambda t: (["label", str(t / "gone.jpg"), "sad"], {}, "gone.jpg"),
    "classify missing file": lambda t: (["classify", str(t / "gone.jpg")], {}, "no current model"),
}


@pytest.fixture(autouse=True)
def fresh_settings():
    settings_module.get_settings.cache_clear()
    yield
    settings_module.get_settings.cache_clear()


def test_every_command_has_a_bad_input_case():
    assert sorted(BAD_INPUT) == sorted(name for name, _ in _commands())


@pytest.mark.parametrize("name", [*BAD_INPUT, *EXTRA])
def test_bad_input_is_one_line_and_exit_code_1(name, tmp_path):
    args, env, phrase = {**BAD_INPUT, **EXTRA}[name](tmp_path)
    base = {"MOODWATCH_DATA_DIR": str(tmp_path / "data"), "MOODWATCH_MODEL_DIR": str(tmp_path / "models"),
            "MOODWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
            "MOODWATCH_BROKER_URL": "redis://127.0.0.1:1/0"}  # never reached: nothing to talk to
    result = CliRunner().invoke(main, args, env={**base, **env})
    # An exception escaping the command is what a user sees as a traceback.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert phrase in lines[0], lines[0]
