"""The nightly job: one training run at a time, skipped when the curated data is unchanged."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

from moodwatch.registry import Registry
from moodwatch.settings import Settings
from trainer.dataset import DatasetError
from trainer.training import DataUnchanged, recipe, train

log = logging.getLogger("moodwatch.trainer")
LOCK_NAME = "moodwatch:training-lock"


def redis_client_for(url: str):
    import redis

    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url[len("redis+socket://"):])
    return redis.Redis.from_url(url)


@contextmanager
def training_lock(broker_url: str, timeout: int = 6 * 3600):
    """Held across processes and machines through the broker's Redis; yields False if taken."""
    client = redis_client_for(broker_url)
    lock = client.lock(LOCK_NAME, timeout=timeout, blocking=False)
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            _release(lock)
        client.close()


def _release(lock: Any) -> None:
    """Release the training lock, saying so when it cannot be: an expired lock (training outlived
    its timeout) is expected and harmless; a broker error leaves it held until it expires."""
    import redis.exceptions

    try:
        lock.release()
    except redis.exceptions.LockNotOwnedError:
        log.info("the training lock had expired before training ended: nothing to release")
    except redis.exceptions.RedisError as exc:
        log.warning("could not release the training lock (%s: %s); it expires by itself",
                    exc.__class__.__name__, exc)


def last_trained_fingerprint(registry: Registry) -> str | None:
    versions = registry.versions()
    return versions[-1].params().get("data_fingerprint") if versions else None


def retrain(settings: Settings, broker_url: str, epochs: int | None = None, force: bool = False
            ) -> dict[str, Any]:
    """Train on DATA_DIR/happy and DATA_DIR/sad if they changed; every run is recorded."""
    registry = Registry(settings.model_dir)
    with training_lock(broker_url) as acquired:
        if not acquired:
            outcome = {"outcome": "skipped", "reason": "another training run holds the lock"}
            registry.record_run(outcome)
            return outcome
        options = recipe(settings, settings.data_dir, epochs=epochs, progress=False,
                         skip_if_fingerprint=None if force else last_trained_fingerprint(registry))
        # One pass over the curated files: train() cleans, fingerprints, and stops if unchanged.
        try:
            result = train(settings, options)
        except DatasetError as exc:
            outcome = {"outcome": "skipped", "reason": f"curated data not usable: {exc}"}
            registry.record_run(outcome)
            return outcome
        except DataUnchanged as exc:
            outcome = {"outcome": "skipped", "reason": str(exc), "data_fingerprint": exc.data_fingerprint}
            registry.record_run(outcome)
            return outcome
        return {"outcome": "promoted" if result.promoted else "trained", "reason": result.reason,
                "version": result.version.name, "accuracy": result.metrics["accuracy"]}
