"""The training lock (trainer/lock.py): a short expiry renewed while training runs, released when
the holder is told to stop, gone within the expiry when the holder dies.

Before, the lock had a fixed six-hour timeout: a `moodwatch retrain` killed with SIGTERM left it
for six hours, and every retrain meanwhile was skipped. Every test uses the suite's own Redis.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.procs import ROOT, service_env, stop, wait_for
from trainer.lock import LOCK_NAME, training_lock

# What a training process does with the lock, in a process of its own: held until killed.
HOLDER = """
import sys, time
from trainer.lock import training_lock
with training_lock(sys.argv[1], expiry=float(sys.argv[2]), renew_every=float(sys.argv[3])) as got:
    print("held" if got else "taken", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _holder(redis_url: str, expiry: float, renew_every: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, redis_url, str(expiry), str(renew_every)],
                            env=service_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # printed inside the `with`: the lock is held
    assert line == "held", f"holder said {line!r} (exit {proc.poll()})"
    return proc


def test_the_lock_is_renewed_past_its_expiry_while_held(redis_url, client):
    with training_lock(redis_url, expiry=1, renew_every=0.2) as got:
        assert got
        time.sleep(2.5)  # two and a half expiries
        assert client.exists(LOCK_NAME)
        assert 0 < client.pttl(LOCK_NAME) <= 1000
        with training_lock(redis_url) as second:
            assert second is False  # still exclusive
    assert not client.exists(LOCK_NAME)


def test_a_holder_stopped_with_sigterm_releases_the_lock(redis_url, client):
    # A long expiry: only a release, not the expiry, can explain the key going.
    proc = _holder(redis_url, expiry=300, renew_every=100)
    assert client.exists(LOCK_NAME)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # unwound, not killed by the signal
    assert not client.exists(LOCK_NAME)
    with training_lock(redis_url) as got:
        assert got  # the next retrain trains instead of "another training run holds the lock"


def test_a_holder_killed_with_sigkill_frees_the_lock_within_its_expiry(redis_url, client):
    proc = _holder(redis_url, expiry=2, renew_every=0.3)
    time.sleep(3)  # past the expiry: the heartbeat keeps it
    assert client.exists(LOCK_NAME)
    proc.kill()
    proc.wait(timeout=10)
    assert client.exists(LOCK_NAME)  # nothing released it: it dies with its expiry
    assert 0 < client.pttl(LOCK_NAME) <= 2000
    wait_for(lambda: not client.exists(LOCK_NAME), 10, "the dead holder's lock to expire")


def test_a_lost_lock_is_said_and_its_release_is_harmless(redis_url, client, caplog):
    """The key went while training ran (a broker that lost its data): the heartbeat says another
    run may train meanwhile; the release at the end finds nothing to release and says so."""
    with caplog.at_level(logging.INFO, logger="moodwatch.trainer"), \
            training_lock(redis_url, expiry=5, renew_every=0.2) as got:
        assert got
        client.delete(LOCK_NAME)
        time.sleep(0.6)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert any(level == logging.WARNING and "expired or was taken" in m for level, m in messages), messages
    assert any(level == logging.INFO and "had expired" in m for level, m in messages), messages


def test_sigterm_is_left_to_a_handler_the_process_already_has(redis_url):
    """A Celery solo worker's own SIGTERM handler (warm shutdown) is not replaced."""
    def mine(*_):
        return None

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with training_lock(redis_url) as got:
            assert got and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


# The Celery case: a retrain task in a prefork pool process that gets SIGTERM (a cold shutdown,
# or systemd's stop of the whole control group). The worker under test imports this module.
celery_app = Celery("locktest", broker=os.environ.get("LOCKTEST_BROKER", "memory://"))
celery_app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                       worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@celery_app.task(name="locktest.hold")
def hold_the_lock(url: str, marker: str) -> None:
    with training_lock(url, expiry=300) as got:
        Path(marker).write_text(f"{os.getpid()} {got}")
        time.sleep(600)


def test_a_celery_pool_process_stopped_with_sigterm_releases_the_lock(tmp_path, redis_url, client):
    log = tmp_path / "worker.log"
    env = {**service_env(), "LOCKTEST_BROKER": redis_url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.test_training_lock:celery_app", "worker",
         "--pool", "prefork", "-c", "1", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-n", "locktest@%h"],
        env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        marker = tmp_path / "held"
        sender = Celery(broker=redis_url)
        sender.send_task("locktest.hold", args=[redis_url, str(marker)])
        wait_for(marker.exists, 60, "the task to hold the lock", log)
        pid, got = marker.read_text().split()
        assert got == "True" and int(pid) != worker.pid  # held in a pool process
        os.kill(int(pid), signal.SIGTERM)
        # The expiry is five minutes: gone now means released by the unwinding task.
        wait_for(lambda: not client.exists(LOCK_NAME), 30, "the pool process to release the lock", log)
        sender.close()
    finally:
        stop(worker, timeout=30)  # its process group: a SIGKILL if it does not stop in time
