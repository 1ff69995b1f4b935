"""The CLI as a user meets it: documented commands, clear errors, non-zero exits."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from moodwatch import settings as settings_module
from moodwatch_app.cli import main
from tests.imagegen import face_like, make_curated, write_image

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    out = []
    for name, cmd in main.commands.items():
        if hasattr(cmd, "commands"):
            if cmd.invoke_without_command:  # a command of its own too (`moodwatch models`)
                out.append((name, cmd))
            out += [(f"{name} {sub}", subcmd) for sub, subcmd in cmd.commands.items()]
        else:
            out.append((name, cmd))
    return out


@pytest.fixture(autouse=True)
def fresh_settings():
    settings_module.get_settings.cache_clear()
    yield
    settings_module.get_settings.cache_clear()


@pytest.mark.parametrize("name, command", _commands())
def test_every_command_has_an_example_and_is_in_the_readme(name, command):
    assert "Example:" in (command.help or ""), f"`moodwatch {name}` --help has no example"
    readme = (ROOT / "README.md").read_text()
    assert f"moodwatch {name}" in readme, f"`moodwatch {name}` is not in the README"


def run(args, env):
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def test_classify_prints_label_and_confidence_and_refuses_text(tmp_path, tiny_model_dir):
    env = {"MOODWATCH_MODEL_DIR": str(tiny_model_dir), "MOODWATCH_DATA_DIR": str(tmp_path)}
    a = write_image(tmp_path / "a.jpg", face_like("happy", 1))
    b = write_image(tmp_path / "b.png", face_like("sad", 2))
    fake = tmp_path / "x.jpg"
    fake.write_text("I am text")
    ok = run(["classify", str(a), str(b)], env)
    assert ok.exit_code == 0
    assert re.search(r"a\.jpg: (happy|sad) \(\d+\.\d%\)", ok.output)
    bad = run(["classify", "--json", str(a), str(fake)], env)
    assert bad.exit_code == 1
    lines = [json.loads(x) for x in bad.output.splitlines() if x.startswith("{")]
    assert lines[0]["label"] in ("happy", "sad") and 0.5 <= lines[0]["confidence"] <= 1
    assert lines[1]["label"] is None and "not a JPEG, PNG or BMP" in lines[1]["error"]


def test_unreadable_model_is_a_clear_error(tmp_path, tiny_model_dir):
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    current = (models / "current").read_text().strip()
    (models / current / "model.keras").write_bytes(b"this is not a keras file")
    img = write_image(tmp_path / "a.jpg", face_like("happy", 1))
    r = CliRunner().invoke(main, ["classify", str(img)], env={"MOODWATCH_MODEL_DIR": str(models)})
    assert r.exit_code == 1 and "cannot load model" in r.output


def test_no_model_is_a_clear_error(tmp_path):
    img = write_image(tmp_path / "a.jpg", face_like("happy", 1))
    r = CliRunner().invoke(main, ["classify", str(img)], env={"MOODWATCH_MODEL_DIR": str(tmp_path / "none")})
    assert r.exit_code == 1 and "no current model" in r.output


@pytest.mark.parametrize("case, message", [
    ("missing-folder", "does not exist"),
    ("empty-class", "class 'sad' has no usable images"),
    ("one-class", "class 'sad' has no usable images"),
    ("too-few", "at least 5"),
])
def test_train_bad_input_exits_non_zero(tmp_path, case, message):
    data = tmp_path / "data"
    if case == "empty-class":
        make_curated(data, per_class=6)
        for p in (data / "sad").iterdir():
            p.unlink()
    elif case == "one-class":
        make_curated(data, per_class=6)
        shutil.rmtree(data / "sad")
    elif case == "too-few":
        make_curated(data, per_class=3)
    env = {"MOODWATCH_MODEL_DIR": str(tmp_path / "models"), "MOODWATCH_DATA_DIR": str(tmp_path / "d")}
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--epochs", "1"], env=env)
    assert r.exit_code == 1 and message in r.output, r.output


def test_results_formats(tmp_path):
    from datetime import UTC, datetime

    from db.engine import make_engine, make_sessionmaker
    from db.migrate import upgrade
    from db.repository import insert_results
    from moodwatch.outcome import Outcome

    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    with make_sessionmaker(make_engine(url))() as s, s.begin():
        insert_results(s, [Outcome.new(f"e{i}", f"/in/{i}.jpg", datetime.now(UTC), status="classified",
                                       label="happy" if i % 2 else "sad", confidence=0.7) for i in range(5)])
    env = {"MOODWATCH_DATABASE_URL": url}
    js = json.loads(run(["results", "--format", "json", "--label", "sad", "--limit", "0"], env).output)
    assert len(js) == 3 and {"id", "label", "confidence", "sha256", "event_id"} <= set(js[0])
    csv = run(["results", "--format", "csv", "--limit", "2"], env).output.splitlines()
    assert csv[0].startswith("id,") and len(csv) == 3
    assert "sad" in run(["results"], env).output
    st = json.loads(run(["stats", "--json"], env).output)
    assert st["by_label"] == {"happy": 2, "sad": 3}


def test_evaluate_reports_figures_calibration_and_csv(tmp_path, tiny_model_dir):
    data = make_curated(tmp_path / "labelled", per_class=8, start=100)
    (data / "sad" / "broken.jpg").write_text("not an image")
    out_csv = tmp_path / "preds.csv"
    env = {"MOODWATCH_MODEL_DIR": str(tiny_model_dir)}
    r = run(["evaluate", "--data", str(data), "--csv", str(out_csv), "--json"], env)
    assert r.exit_code == 0, r.output
    figures = json.loads(r.output[r.output.index("{"):])
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix", "calibration", "ece"):
        assert key in figures
    assert figures["n"] == 16 and figures["unreadable"] == 1
    assert sum(b["n"] for b in figures["calibration"]) == 16
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("file,truth,predicted") and len(lines) == 18
    text = run(["evaluate", "--data", str(data), "--csv", str(out_csv)], env).output
    assert "ROC AUC" in text and "calibration" in text
    assert CliRunner().invoke(main, ["evaluate", "--data", str(tmp_path / "nope")], env=env).exit_code == 1


def test_roc_auc_matches_pairwise_definition():
    import numpy as np

    from trainer.report import roc_auc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) * 0.5 + y * 0.3, 2)  # rounded: ties on purpose
    pos, neg = s[y == 1], s[y == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert abs(roc_auc(y, s) - pairwise) < 1e-9


def test_label_copies_and_relabel_moves_the_copy(tmp_path):
    photo = write_image(tmp_path / "processed" / "p.jpg", face_like("happy", 4))
    env = {"MOODWATCH_DATA_DIR": str(tmp_path / "data")}
    assert run(["label", str(photo), "happy"], env).exit_code == 0
    assert (tmp_path / "data" / "happy" / "p.jpg").is_file() and photo.is_file()
    run(["label", str(photo), "sad"], env)
    assert not (tmp_path / "data" / "happy" / "p.jpg").exists()
    assert (tmp_path / "data" / "sad" / "p.jpg").read_bytes() == photo.read_bytes()


def _queued_messages(broker: str) -> list[dict]:
    """The file messages waiting on the classify queue, decoded from Celery's JSON envelope."""
    import base64

    import redis

    client = redis.Redis.from_url(broker)
    try:
        raw = client.lrange("classify", 0, -1)
    finally:
        client.close()
    out = []
    for envelope in map(json.loads, raw):
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        out += args[0]
    return out


def test_submit_sends_absolute_paths_from_any_folder(tmp_path, monkeypatch, redis_url):
    from tests.procs import Rows

    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "rel.jpg", face_like("happy", 1))
    (elsewhere / "notes.jpg").write_text("not an image")
    monkeypatch.chdir(elsewhere)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    env = {"MOODWATCH_DATA_DIR": str(tmp_path / "data"), "MOODWATCH_DATABASE_URL": db,
           "MOODWATCH_BROKER_URL": redis_url}
    r = run(["submit", "rel.jpg", "notes.jpg"], env)
    assert r.exit_code == 0, r.output
    [queued] = _queued_messages(redis_url)
    assert queued["path"] == str(elsewhere / "rel.jpg")
    rows = Rows(db)
    try:
        [rejected] = rows.all()
    finally:
        rows.close()
    assert rejected.path == str(elsewhere / "notes.jpg") and rejected.status == "rejected"


def test_classify_missing_file_says_file_not_found_without_worker_words(tmp_path, tiny_model_dir):
    env = {"MOODWATCH_MODEL_DIR": str(tiny_model_dir)}
    r = CliRunner().invoke(main, ["classify", str(tmp_path / "gone.jpg")], env=env)
    assert r.exit_code == 1
    assert f"file not found: {tmp_path / 'gone.jpg'}" in r.output and "worker" not in r.output


def test_submit_of_a_recorded_file_says_so_and_queues_nothing(tmp_path, monkeypatch, redis_url):
    from db.engine import make_engine, make_sessionmaker
    from db.models import Result

    photo = write_image(tmp_path / "share" / "p.jpg", face_like("happy", 3))
    text = tmp_path / "share" / "t.jpg"
    text.write_text("text")
    db = f"sqlite:///{tmp_path / 'r.db'}"
    env = {"MOODWATCH_DATA_DIR": str(tmp_path / "data"), "MOODWATCH_DATABASE_URL": db,
           "MOODWATCH_BROKER_URL": redis_url}
    first = run(["submit", str(photo), str(text)], env)
    assert first.exit_code == 0 and "p.jpg: queued" in first.output and "t.jpg: rejected" in first.output
    [message] = _queued_messages(redis_url)
    # As a worker would: the photo's row.
    from datetime import UTC, datetime

    from db.repository import insert_results
    from moodwatch.outcome import Outcome

    engine = make_engine(db)
    with make_sessionmaker(engine)() as s, s.begin():
        insert_results(s, [Outcome.new(message["event_id"], message["path"], datetime.now(UTC),
                                       sha256=message["sha256"], status="classified", label="happy",
                                       confidence=0.9)])
    with make_sessionmaker(engine)() as s:
        ids = {r.file_name: r.id for r in s.query(Result)}
    engine.dispose()
    again = run(["submit", str(photo), str(text)], env)
    assert again.exit_code == 0, again.output
    assert f"p.jpg: already recorded as #{ids['p.jpg']}" in again.output
    assert f"t.jpg: already recorded as #{ids['t.jpg']}" in again.output
    assert "queued" not in again.output and len(_queued_messages(redis_url)) == 1


def test_evaluate_writes_a_csv_only_where_csv_says(tmp_path, monkeypatch, tiny_model_dir):
    data = make_curated(tmp_path / "labelled", per_class=3, start=200)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    r = run(["evaluate", "--data", str(data)], {"MOODWATCH_MODEL_DIR": str(tiny_model_dir)})
    assert r.exit_code == 0, r.output
    assert list(cwd.iterdir()) == [] and "per-file predictions" not in r.output


def test_results_table_columns_fit_their_content(tmp_path):
    from datetime import UTC, datetime

    from db.engine import make_engine, make_sessionmaker
    from db.migrate import upgrade
    from db.repository import insert_results
    from moodwatch.outcome import Outcome

    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    long_version = "v20261129T021727645155-default-faces"  # 36 characters
    when = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s, s.begin():
        insert_results(s, [
            Outcome.new("e1", "/in/a.jpg", when, status="classified", label="happy", confidence=0.9,
                        model_version=long_version),
            Outcome.new("e2", "/in/a_much_longer_file_name.png", when, status="rejected",
                        error="not a JPEG, PNG or BMP image"),
        ])
    engine.dispose()
    lines = run(["results"], {"MOODWATCH_DATABASE_URL": url}).output.splitlines()
    header, rows = lines[0], lines[1:]
    assert len(rows) == 2 and long_version in rows[1]
    # Every column starts at the same place on every line: the dates line up under their header.
    for col, value in (("received_at", "2026-11-29"), ("file_name", "a"), ("error", None)):
        start = header.index(col)
        for row in rows:
            if value is not None:
                assert row[start:].startswith(value), (col, row)
    assert rows[0][header.index("error"):].startswith("not a JPEG")
    assert all(line == line.rstrip() for line in lines)


@pytest.mark.slow
def test_run_status_and_logs_never_show_a_password(tmp_path, tiny_model_dir, pg_url):
    import signal
    import subprocess
    import sys
    import time

    from tests.procs import service_env, stop, wait_for

    secret = "Sup3rSecretPw"  # trust auth: PostgreSQL ignores it, so the stack really runs
    url = pg_url.replace("postgres@", f"postgres:{secret}@")
    env = service_env(data_dir=tmp_path / "data", model_dir=tiny_model_dir, database_url=url)
    env.pop("MOODWATCH_BROKER_URL", None)
    log = tmp_path / "run.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "-v", "run", "--no-web",
                                 "--no-beat"], env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
    try:
        # The banner waits for the worker's model (loaded and warmed up): a minute on a busy machine.
        wait_for(lambda: "moodwatch is running" in log.read_text(errors="replace"), 180, "start", log)
        write_image(tmp_path / "data" / "inbox" / "a.jpg", face_like("happy", 1))
        wait_for(lambda: "a.jpg: classified" in log.read_text(errors="replace"), 120, "a row", log)
        time.sleep(1)
    finally:
        stop(proc, signal.SIGTERM)
    output = log.read_text(errors="replace")
    assert secret not in output and "postgres:***@" in output
    status = subprocess.run(
        [sys.executable, "-m", "moodwatch_app.cli", "status", "--json"], cwd=ROOT, capture_output=True,
        text=True,
        env={**env, "MOODWATCH_BROKER_URL": f"redis://:{secret}@127.0.0.1:1/0"}, timeout=120)
    assert secret not in status.stdout + status.stderr
    shown = json.loads(status.stdout)
    assert shown["database"].startswith("postgresql") and "***" in shown["broker_url"]


def test_every_log_line_masks_credentials(caplog):
    import logging

    from moodwatch.redact import install

    install()
    logging.getLogger("moodwatch.anything").warning("cannot reach %s", "postgresql://u:hunter2@db:5432/x")
    assert "hunter2" not in caplog.text and "postgresql://u:***@db:5432/x" in caplog.text
