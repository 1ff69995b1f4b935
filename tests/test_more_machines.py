"""Issue 21, end to end: a worker on "another machine" (its own mount namespace, a tmpfs over the
watcher's data folder and over every model folder, its own data folder and an EMPTY model folder,
its models from the database) and the watcher on the machine with the inbox, over the broker
transport. Real processes, real PostgreSQL, real Redis (the suite's own, or one of this test's).

To stop a batch in its middle without timing, the test holds a SHARE lock on `results`: a worker
classifies its batch, then waits at its INSERT, visibly (pg_locks), until the lock is let go.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from db.engine import make_engine
from db.migrate import upgrade
from moodwatch.jobs import CLAIM_PREFIX
from moodwatch.publication import publish_promotion
from moodwatch.registry import Registry, Version
from moodwatch.settings import Settings
from tests.conftest import missing
from tests.imagegen import face_like, write_image
from tests.procs import ROOT, OwnRedis, Rows, service_env, stop, wait_for

pytestmark = pytest.mark.slow

BATCH = 4


@dataclass
class Machines:
    """The watcher's machine (inbox, trainer registry) and the worker's (nothing shared)."""

    tmp: Path
    pg_url: str
    redis_url: str
    wdata: Path  # the watcher's data folder: hidden from the worker
    registry: Registry  # the trainer's registry: hidden from the worker
    trainer: Settings
    hidden: list[Path]  # every folder the worker's namespace covers with a tmpfs

    @property
    def inbox(self) -> Path:
        return self.wdata / "inbox"

    @property
    def processed(self) -> Path:
        return self.wdata / "processed"


def _machines(tmp: Path, pg_url: str, redis_url: str, tiny_model_dir: Path) -> Machines:
    """PostgreSQL migrated, the tiny model promoted and published as training does."""
    if shutil.which("unshare") is None:
        missing("no unshare (util-linux): the worker needs a mount namespace of its own")
    upgrade(pg_url)
    wdata = tmp / "watcher-data"
    (wdata / "inbox").mkdir(parents=True)
    trainer = Settings(data_dir=wdata, model_dir=tmp / "shipped", local_model_dir=tmp / "registry",
                       database_url=pg_url)
    registry = Registry.for_settings(trainer)
    tiny = Registry(tiny_model_dir).require_current()
    shutil.copytree(tiny.path, registry.root / tiny.name)
    m = Machines(tmp, pg_url, redis_url, wdata, registry, trainer,
                 hidden=[wdata, registry.root, tiny_model_dir])
    _promote(m, registry.get(tiny.name))
    return m


def _promote(m: Machines, version: Version) -> None:
    """What trainer.training does at a promotion."""
    m.registry.promote(version)
    publish_promotion(m.trainer, version)


def _second_version(m: Machines) -> Version:
    """A copy of the current version under a new name, as a retrain would leave it."""
    current = m.registry.require_current()
    newer = m.registry.new_version_dir("newer")
    shutil.copytree(current.path, newer.path, dirs_exist_ok=True)
    return m.registry.get(newer.name)


def _common(m: Machines, **extra) -> dict:
    return dict(broker_url=m.redis_url, database_url=m.pg_url, transport="broker", batch_size=BATCH,
                **extra)


def start_watcher(m: Machines, log: Path, **extra) -> subprocess.Popen:
    env = service_env(data_dir=m.wdata, model_dir=m.tmp / "shipped", settle_seconds=0.3, batch_wait=0.2,
                      **_common(m, **extra))
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "moodwatch_app.cli", "watch"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def start_remote_worker(m: Machines, name: str, log: Path, **extra) -> subprocess.Popen:
    """A worker in a mount namespace of its own: each hidden folder is an empty tmpfs there, so a
    row can only come from bytes sent through Redis and a model only from the database."""
    wdir = m.tmp / f"{name}-data"
    empty = m.tmp / f"{name}-models"
    empty.mkdir(parents=True, exist_ok=True)
    env = service_env(data_dir=wdir, inbox=wdir / "inbox", model_dir=empty, model_source="database",
                      **_common(m, **extra))
    mounts = " && ".join(f'mount -t tmpfs tmpfs "{p}" && test -z "$(ls -A "{p}")"' for p in m.hidden)
    script = f'{mounts} && exec "{sys.executable}" -m moodwatch_app.cli worker -c 1 -n {name}@%h'
    with open(log, "ab") as out:
        return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def _loaded(log: Path, version: str) -> bool:
    return f"model {version} loaded" in log.read_text(errors="replace")


def drop(m: Machines, start: int, n: int) -> list[Path]:
    """Photos with bytes of their own (distinct seeds): no row is a duplicate of another's."""
    return [write_image(m.inbox / f"img_{i}.jpg", face_like("happy" if i % 2 else "sad", i))
            for i in range(start, start + n)]


def claim_keys(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=f"{CLAIM_PREFIX}*"))
    finally:
        client.close()


def moved(m: Machines) -> list[str]:
    return sorted(p.name for p in m.processed.rglob("*.jpg"))


def assert_one_row_each(rows: Rows, files: list[Path]) -> None:
    found = rows.all()
    per_path = Counter(r.path for r in found)
    assert sorted(per_path) == sorted(str(f) for f in files), "a file without a row, or a stray row"
    assert set(per_path.values()) == {1}, [p for p, n in per_path.items() if n > 1]
    assert all(r.status == "classified" and r.label in ("happy", "sad") for r in found), \
        [(r.path, r.status, r.error) for r in found if r.status != "classified"]


def assert_all_moved(m: Machines, files: list[Path], log: Path) -> None:
    wait_for(lambda: len(moved(m)) == len(files), 20, "the watcher moving every photo", log)
    assert moved(m) == sorted(f.name for f in files) and not any(f.exists() for f in files)


@contextlib.contextmanager
def rows_held(pg_url: str) -> Iterator[None]:
    """No row can be committed meanwhile: SHARE conflicts with the INSERT's ROW EXCLUSIVE."""
    engine = make_engine(pg_url)
    conn = engine.connect()
    try:
        conn.execute(text("LOCK TABLE results IN SHARE MODE"))  # holds until the rollback
        yield
    finally:
        conn.rollback()
        conn.close()
        engine.dispose()


def inserts_waiting(pg_url: str) -> int:
    """Worker transactions that classified a batch and wait at its INSERT."""
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            return conn.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                    "AND relation = 'results'::regclass")) or 0
    finally:
        engine.dispose()


def _model_versions(rows: Rows, files: list[Path]) -> set[str]:
    names = {str(f) for f in files}
    return {r.model_version for r in rows.all() if r.path in names}


def test_remote_worker_classifies_the_watcher_moves_and_a_promotion_reaches_it(
        tmp_path, tiny_model_dir, pg_url, redis_url):
    m = _machines(tmp_path, pg_url, redis_url, tiny_model_dir)
    first = m.registry.require_current().name
    wlog, olog = tmp_path / "worker.log", tmp_path / "watcher.log"
    watcher = start_watcher(m, olog)
    worker = start_remote_worker(m, "remote1", wlog)
    rows = Rows(pg_url)
    try:
        files = drop(m, 0, 10)
        wait_for(lambda: rows.count() >= len(files), 240, "a row per photo", wlog)
        assert_one_row_each(rows, files)
        assert _model_versions(rows, files) == {first}
        assert_all_moved(m, files, olog)
        wait_for(lambda: not claim_keys(redis_url), 10, "no bytes left in Redis after the drop")
        # The worker's folders hold its model cache only: nothing of the inbox, no model folder used.
        assert not any((tmp_path / "remote1-models").iterdir())
        assert not (tmp_path / "remote1-data" / "processed").exists()

        # A promotion on the trainer's machine reaches the worker through the database.
        newer = _second_version(m)
        _promote(m, newer)
        wait_for(lambda: _loaded(wlog, newer.name), 120, "the promoted version loaded remotely", wlog)
        more = drop(m, 100, 6)
        wait_for(lambda: rows.count() >= len(files) + len(more), 120, "rows after the promotion", wlog)
        assert_one_row_each(rows, files + more)
        assert _model_versions(rows, more) == {newer.name}
        assert_all_moved(m, files + more, olog)
        wait_for(lambda: not claim_keys(redis_url), 10, "no bytes left in Redis after the second drop")
    finally:
        stop(watcher)
        stop(worker)
        rows.close()
    assert "file not found" not in wlog.read_text(errors="replace")


def test_a_worker_killed_mid_batch_gets_its_job_redelivered(tmp_path, tiny_model_dir, pg_url, redis_url):
    m = _machines(tmp_path, pg_url, redis_url, tiny_model_dir)
    version = m.registry.require_current().name
    olog = tmp_path / "watcher.log"
    alog, blog = tmp_path / "worker-a.log", tmp_path / "worker-b.log"
    fast = dict(visibility_timeout=5)  # a killed worker's job goes to another within seconds
    watcher = start_watcher(m, olog, **fast)
    worker_a = start_remote_worker(m, "nodea", alog, **fast)
    worker_b = None
    rows = Rows(pg_url)
    broker = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: _loaded(alog, version), 240, "worker A ready", alog)
        with rows_held(pg_url):
            files = drop(m, 0, 6)
            wait_for(lambda: inserts_waiting(pg_url) >= 1, 120, "worker A in the middle of a batch", alog)
            wait_for(lambda: len(claim_keys(redis_url)) == len(files), 20, "every photo sent", olog)
            os.killpg(worker_a.pid, signal.SIGKILL)
            worker_a.wait(timeout=20)
            assert rows.count() == 0
        # Taken and never acknowledged: the job waits in kombu's unacked set, its bytes in Redis.
        assert broker.hlen("unacked") >= 1
        assert len(claim_keys(redis_url)) == len(files)

        worker_b = start_remote_worker(m, "nodeb", blog, **fast)
        wait_for(lambda: rows.count() >= len(files), 240, "the killed job's rows from worker B", blog)
        assert_one_row_each(rows, files)
        assert_all_moved(m, files, olog)
        wait_for(lambda: not claim_keys(redis_url), 10, "no bytes left in Redis after the drop")
        assert broker.hlen("unacked") == 0
    finally:
        stop(watcher)
        stop(worker_a)
        if worker_b is not None:
            stop(worker_b)
        rows.close()
        broker.close()
    # The rows came from the very job A held, redelivered, not from the watcher sending again.
    taken = re.findall(r"classify_batch\[([0-9a-f-]+)\] received", alog.read_text(errors="replace"))
    assert taken and f"classify_batch[{taken[0]}] succeeded" in blog.read_text(errors="replace")
    assert "succeeded" not in alog.read_text(errors="replace")
    assert "sending it again" not in olog.read_text(errors="replace")


def test_redis_restarted_empty_mid_drop_every_file_gets_one_row(tmp_path, tiny_model_dir, pg_url,
                                                                  redis_binary):
    server = OwnRedis(tmp_path / "redis", redis_binary, appendonly=False)  # no persistence at all
    server.start()
    m = _machines(tmp_path, pg_url, server.url(0), tiny_model_dir)
    wlog, olog = tmp_path / "worker.log", tmp_path / "watcher.log"
    watcher = start_watcher(m, olog)
    worker = start_remote_worker(m, "remote1", wlog)
    rows = Rows(pg_url)
    try:
        early = drop(m, 0, BATCH)
        wait_for(lambda: rows.count() >= len(early), 240, "the first photos' rows", wlog)
        assert_all_moved(m, early, olog)  # the watcher's own writes (moves) done before the lock
        with rows_held(pg_url):
            late = drop(m, 100, 3 * BATCH)
            # Mid-drop: every photo sent, its bytes in Redis, one batch in the worker's hands.
            wait_for(lambda: len(claim_keys(server.url(0))) == len(late), 30, "the photos sent", olog)
            wait_for(lambda: inserts_waiting(pg_url) >= 1, 120, "the worker in the middle of a batch", wlog)
            server.stop()
            server.start()  # same port, nothing kept: the jobs and their bytes are gone
            assert not claim_keys(server.url(0))
            assert rows.count() == len(early)
        wait_for(lambda: rows.count() >= len(early) + len(late), 240, "a row for every photo", olog)
        assert_one_row_each(rows, early + late)
        assert_all_moved(m, early + late, olog)
        wait_for(lambda: not claim_keys(server.url(0)), 10, "no bytes left in Redis after the drop")
    finally:
        stop(watcher)
        stop(worker)
        rows.close()
        server.stop()
    assert "sending it again" in olog.read_text(errors="replace")  # the watcher held the files


def test_rows_held_blocks_every_insert(pg_url):
    """The lock the tests above stop a batch with: an INSERT waits on it (else they prove nothing)."""
    upgrade(pg_url)
    engine = make_engine(pg_url)
    try:
        with rows_held(pg_url), engine.connect() as conn:
            conn.execute(text("SET lock_timeout = '300ms'"))
            with pytest.raises(Exception, match="lock timeout"):
                conn.execute(text("LOCK TABLE results IN ROW EXCLUSIVE MODE"))  # what INSERT takes
    finally:
        engine.dispose()
