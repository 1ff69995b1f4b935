"""MOODWATCH_TRANSPORT=broker: the watcher sends each file's bytes through Redis (a claim check),
a worker that cannot see the inbox classifies them, and the watcher moves the files itself.
Real Redis (the suite's own), real PostgreSQL, a real watcher and a real worker process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.repository import insert_results
from moodwatch import settings as settings_module
from moodwatch.broker import redis_client
from moodwatch.claims import ClaimStore
from moodwatch.jobs import CLAIM_PREFIX, FileJob, claim_key
from moodwatch.outcome import Outcome
from moodwatch.queue import CLASSIFY_TASK, make_celery
from moodwatch.settings import Settings
from moodwatch_app.cli import main
from tests.imagegen import face_like, write_image
from tests.procs import ROOT, Rows, service_env, stop, wait_for
from watcher.service import Watcher


def _images(folder: Path, n: int, start: int = 0) -> list[Path]:
    return [write_image(folder / f"img_{i}.jpg", face_like("happy" if i % 2 else "sad", i))
            for i in range(start, start + n)]


def _claim_keys(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=f"{CLAIM_PREFIX}*"))
    finally:
        client.close()


class Recorder:
    """A sender that keeps what it was given, as the worker would read it."""

    def __init__(self) -> None:
        self.batches: list[list[FileJob]] = []

    def __call__(self, messages: list[dict]) -> None:
        self.batches.append([FileJob.model_validate(m) for m in messages])

    @property
    def sent(self) -> list[FileJob]:
        return [m for b in self.batches for m in b]


def _broker_settings(tmp_path: Path, pg_url: str, redis_url: str, **extra) -> Settings:
    return Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models", database_url=pg_url,
                    broker_url=redis_url, transport="broker", settle_seconds=0, batch_wait=0,
                    rescan_seconds=3600, **extra)


def _steps(w: Watcher, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        w.step()
        time.sleep(0.05)


def _record(sessions, jobs: list[FileJob], claims: ClaimStore) -> None:
    """What a worker does with a job: rows committed, then the bytes deleted."""
    with sessions() as s, s.begin():
        insert_results(s, [Outcome.new(j.event_id, j.path, j.arrived, status="classified", label="happy",
                                       confidence=0.9, sha256=j.sha256, classified_at=datetime.now(UTC))
                           for j in jobs])
    claims.delete(claim_key(j.event_id) for j in jobs)


def test_broker_transport_with_sqlite_is_one_error_line(tmp_path):
    with pytest.raises(ValueError, match="MOODWATCH_TRANSPORT=broker needs a database"):
        Settings(data_dir=tmp_path / "data", transport="broker")
    env = {"MOODWATCH_DATA_DIR": str(tmp_path / "data"), "MOODWATCH_TRANSPORT": "broker",
           "MOODWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", "MOODWATCH_INBOX": None,
           "MOODWATCH_BROKER_URL": "redis://127.0.0.1:1/0"}
    settings_module.get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["status"], env=env)
    finally:
        settings_module.get_settings.cache_clear()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "MOODWATCH_DATABASE_URL=postgresql" in lines[0]


def test_in_flight_bound_makes_the_watcher_wait_and_a_lost_job_frees_it(tmp_path, pg_url, redis_url):
    upgrade(pg_url)
    # Six photos of the same size, so that the bound counts whole files exactly.
    photo = _images(tmp_path / "src", 1)[0].read_bytes()
    inbox = tmp_path / "data" / "inbox"
    inbox.mkdir(parents=True)
    for i in range(6):
        (inbox / f"p{i}.jpg").write_bytes(photo)
    size = len(photo)
    settings = _broker_settings(tmp_path, pg_url, redis_url, batch_size=2, max_inflight_jobs=10,
                                max_inflight_bytes=3 * size)
    sessions = make_sessionmaker(make_engine(pg_url))
    claims = ClaimStore(redis_client(redis_url, 30), settings.claim_ttl_seconds)
    rec = Recorder()
    w = Watcher(settings, rec, sessions, claims=claims)
    w.rescan()
    _steps(w, 1.5)
    # Three files' bytes fit: one job of two, then one more file; the rest wait in the watcher.
    assert len(rec.sent) == 3 and w.in_flight()[0] == 3 and len(w.backlog().pending) == 3
    assert claims.held() <= settings.max_inflight_bytes
    for m in rec.sent:  # the message carries the key, the size and the hash of the bytes put
        assert claims.get(m.claim) == Path(m.path).read_bytes()
        held = claims.get(m.claim)
        assert m.size == len(held) and m.sha256 == hashlib.sha256(held).hexdigest()

    _record(sessions, rec.batches[0], claims)  # one job done: room for two more
    _steps(w, 2.5)
    assert len(rec.sent) == 5 and claims.held() <= settings.max_inflight_bytes
    # The first job's files were moved by the watcher, as soon as their rows appeared.
    assert all(not Path(m.path).exists() for m in rec.batches[0])
    assert len(list((settings.processed_dir / "happy").iterdir())) == 2

    # A job lost with its bytes (expired, Redis restarted empty): no longer in flight, and sent
    # again, instead of holding the bound forever.
    lost = rec.batches[1][0]
    claims.delete([lost.claim])
    _record(sessions, rec.batches[2], claims)
    _steps(w, 2.5)
    assert [m.event_id for m in rec.sent].count(lost.event_id) == 2
    assert len({m.event_id for m in rec.sent}) == 6


def test_watcher_restart_moves_recorded_files_at_once(tmp_path, pg_url, redis_url):
    """Rows written while the watcher was down: the restarted watcher moves their files at start,
    not MOODWATCH_RESEND_SECONDS later (no worker moves files in broker mode)."""
    upgrade(pg_url)
    files = _images(tmp_path / "data" / "inbox", 2)
    settings = _broker_settings(tmp_path, pg_url, redis_url)
    sessions = make_sessionmaker(make_engine(pg_url))
    claims = ClaimStore(redis_client(redis_url, 30), settings.claim_ttl_seconds)
    first = Recorder()
    w = Watcher(settings, first, sessions, claims=claims)
    w.rescan()
    _steps(w, 1.0)
    assert len(first.sent) == 2
    _record(sessions, first.sent, claims)  # ... while this watcher is gone
    assert all(f.exists() for f in files)
    again = Watcher(settings, Recorder(), sessions, claims=claims)
    again.rescan()
    assert not any(f.exists() for f in files)
    moved = sorted(p.name for p in (settings.processed_dir / "happy").iterdir())
    assert moved == sorted(f.name for f in files)


@pytest.mark.slow
def test_worker_without_the_inbox_classifies_and_the_watcher_moves(tmp_path, tiny_model_dir, redis_url,
                                                                     pg_url):
    """The worker runs in its own mount namespace with a tmpfs over the watcher's data folder:
    the inbox path is empty there, so a row can only come from the bytes sent through Redis."""
    upgrade(pg_url)
    wdata = tmp_path / "watcher-data"
    inbox = wdata / "inbox"
    inbox.mkdir(parents=True)
    common = dict(broker_url=redis_url, database_url=pg_url, model_dir=tiny_model_dir, transport="broker",
                  batch_size=8)
    watcher_env = service_env(data_dir=wdata, settle_seconds=0.3, batch_wait=0.2, **common)
    worker_env = service_env(data_dir=tmp_path / "worker-data", inbox=tmp_path / "worker-data" / "inbox",
                             **common)
    worker_log, watcher_log = tmp_path / "worker.log", tmp_path / "watcher.log"
    script = (f'mount -t tmpfs tmpfs "{wdata}" && test -z "$(ls -A "{wdata}")" && '
              f'exec "{sys.executable}" -m moodwatch_app.cli worker -c 1 -n broker1@%h')
    with open(worker_log, "ab") as wl, open(watcher_log, "ab") as ol:
        worker = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                  env=worker_env, stdout=wl, stderr=subprocess.STDOUT, cwd=ROOT,
                                  start_new_session=True)
        watcher = subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "watch"], env=watcher_env,
                                   stdout=ol, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    rows = Rows(pg_url)
    processed = wdata / "processed"
    try:
        files = _images(inbox, 12)
        wait_for(lambda: rows.count() >= len(files), 180, "a row per photo", worker_log)
        found = rows.all()
        assert sorted(r.path for r in found) == sorted(str(f) for f in files)
        assert all(r.status == "classified" and r.label in ("happy", "sad") for r in found), \
            [(r.status, r.error) for r in found]
        moved = lambda: sorted(p.name for p in processed.rglob("*.jpg"))  # noqa: E731
        wait_for(lambda: len(moved()) == len(files), 15, "the watcher moving the photos", watcher_log)
        assert moved() == sorted(f.name for f in files) and not any(f.exists() for f in files)
        assert all(Path(r.stored_path).parent.parent == processed for r in rows.all())
        wait_for(lambda: not _claim_keys(redis_url), 10, "no bytes left in Redis")

        # A forged job: its claim holds some photo's bytes, its sha256 is of other bytes.
        photo = write_image(tmp_path / "elsewhere.jpg", face_like("happy", 99)).read_bytes()
        event_id = hashlib.sha256(b"forged").hexdigest()[:40]
        client = redis.Redis.from_url(redis_url)
        client.set(claim_key(event_id), photo, ex=600)
        forged = FileJob(event_id=event_id, path=str(inbox / "forged.jpg"), claim=claim_key(event_id),
                         size=len(photo), sha256=hashlib.sha256(b"other").hexdigest())
        app = make_celery(Settings(broker_url=redis_url, database_url=pg_url))
        app.send_task(CLASSIFY_TASK, args=[[forged.wire()]])
        wait_for(lambda: rows.count() > len(files), 60, "the forged job's row", worker_log)
        time.sleep(1)
        extra = [r for r in rows.all() if r.path == forged.path]
        assert len(rows.all()) == len(files) + 1 and len(extra) == 1
        assert extra[0].status == "failed" and "sha256" in extra[0].error
        assert extra[0].event_id != event_id  # a forged job never takes the event id it claims
        assert client.exists(claim_key(event_id))  # nothing else: the claim is not deleted
        assert len(moved()) == len(files)
        client.close()
        app.close()
    finally:
        stop(watcher)
        stop(worker)
        rows.close()
    assert "file not found" not in worker_log.read_text(errors="replace")
