"""The training lock: one training run at a time, across processes and machines, in the broker's
Redis.

The key expires a minute after its holder's last heartbeat: a thread renews it while training
runs, so a run may take hours, but a holder that died (SIGKILL, a lost machine) frees it within
a minute instead of the six hours a fixed timeout had to allow. A SIGTERM that would end the
process on the spot (Python's default, e.g. `moodwatch retrain`) raises SystemExit while the lock
is held, so the run unwinds: its unfinished version folder is removed and the key deleted.
Where SIGTERM already has a handler it is left alone: a Celery pool process's raises SystemExit
too (billiard), and a solo worker's main process waits for the task (warm shutdown).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moodwatch.broker import redis_client

log = logging.getLogger("moodwatch.trainer")
LOCK_NAME = "moodwatch:training-lock"
LOCK_EXPIRY_S = 60.0  # how long a dead holder keeps the lock
MAX_HOLD_S = 6 * 3600.0  # a run still going after this (hung?) stops renewing: others may train


@contextmanager
def training_lock(broker_url: str, expiry: float = LOCK_EXPIRY_S, renew_every: float | None = None,
                  max_hold: float = MAX_HOLD_S) -> Iterator[bool]:
    """Yields True while this process holds the lock (renewed every ``renew_every``, default a
    third of ``expiry``), False at once if another run holds it."""
    client = redis_client(broker_url, timeout=None)
    # thread_local=False: the heartbeat thread renews with the token the acquiring thread got.
    lock = client.lock(LOCK_NAME, timeout=expiry, blocking=False, thread_local=False)
    try:
        acquired = lock.acquire(blocking=False)
        if not acquired:
            yield False
            return
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(lock, stop, renew_every or expiry / 3, max_hold),
                                name="training-lock-heartbeat", daemon=True)
        beat.start()
        try:
            with _sigterm_unwinds():
                yield True
        finally:
            stop.set()
            beat.join()
            _release(lock)
    finally:
        client.close()


def _heartbeat(lock: Any, stop: threading.Event, every: float, max_hold: float) -> None:
    import redis.exceptions

    deadline = time.monotonic() + max_hold
    while not stop.wait(every):
        if time.monotonic() > deadline:
            log.warning("training has held its lock for %.0f s: no longer renewed, so another run "
                        "may start when it expires", max_hold)
            return
        try:
            lock.reacquire()  # the expiry counts again from now
        except redis.exceptions.LockNotOwnedError:
            log.warning("the training lock expired or was taken while training ran; another run "
                        "may train at the same time")
            return
        except redis.exceptions.RedisError as exc:  # the next beat may still come before expiry
            log.warning("could not renew the training lock (%s: %s); retrying",
                        exc.__class__.__name__, exc)


class Terminated(SystemExit):
    """SIGTERM arrived while training held the lock."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the lock is held, a default (instant) SIGTERM raises instead, in the main thread."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminate(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is terminate:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _release(lock: Any) -> None:
    """Release the training lock, saying so when it cannot be: a lock that expired (a heartbeat
    failed) is harmless here; a broker error leaves it held until it expires, within a minute."""
    import redis.exceptions

    try:
        lock.release()
    except redis.exceptions.LockNotOwnedError:
        log.info("the training lock had expired before training ended: nothing to release")
    except redis.exceptions.RedisError as exc:
        log.warning("could not release the training lock (%s: %s); it expires by itself",
                    exc.__class__.__name__, exc)
