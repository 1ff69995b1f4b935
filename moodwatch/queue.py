"""The Celery app's configuration and task names, shared by whoever sends or runs tasks.

Senders (watcher, CLI) use task names only, so they never import the worker or TensorFlow.
"""

from __future__ import annotations

import warnings

import kombu.exceptions
import redis.exceptions
from celery import Celery
from celery.exceptions import CPendingDeprecationWarning, SecurityWarning
from celery.signals import celeryd_after_setup

from moodwatch.broker import client_name, start_or_join_broker
from moodwatch.settings import Settings, cron

# What a broker that cannot be reached raises (kombu wraps most connection errors in its
# OperationalError); anything else from a send is a bug, and is not called an outage.
BROKER_ERRORS: tuple[type[Exception], ...] = (
    OSError, kombu.exceptions.OperationalError, redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

CLASSIFY_TASK = "moodwatch.classify_batch"
RETRAIN_TASK = "moodwatch.retrain"
CLASSIFY_QUEUE = "classify"
TRAINING_QUEUE = "training"


def quiet_celery() -> None:
    """Silence Celery's warnings that no user of moodwatch can act on (each process that makes
    the app; idempotent). Every other warning, and every error, still shows."""
    # Running as root (containers do): Celery's real concern is unpickling messages as root, and
    # it refuses to start then; this app accepts JSON only, so the warning has nothing to act on.
    warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges",
                            category=SecurityWarning)
    # At every reconnect: a default changes in Celery 6; the setting is chosen above.
    warnings.filterwarnings("ignore", message=r"\s*In Celery 5.1 we introduced an optional breaking change",
                            category=CPendingDeprecationWarning)


@celeryd_after_setup.connect
def _quiet_after_log_setup(**_: object) -> None:
    # A worker's log set-up puts an 'always' filter for Celery's deprecation warnings in front.
    quiet_celery()


def make_celery(settings: Settings) -> Celery:
    quiet_celery()
    # Making the app may start the embedded Redis: every sender and worker needs a broker.
    app = Celery("moodwatch", broker=start_or_join_broker(settings), set_as_current=True)
    app.conf.update(
        # JSON only: a message from the broker is never unpickled.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        # A job is acknowledged after it ran; a worker killed mid-job leaves it to be redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            # Named, so the process that started an embedded Redis can tell who else still uses it.
            "client_name": client_name(),
            "visibility_timeout": settings.visibility_timeout,
            # Look for jobs of dead workers every few seconds, not every ~100 s (kombu's default).
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 2)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        # Celery 5's behaviour, on purpose: a batch that runs on through a lost connection
        # finishes (its rows and moves are one unit) and is redelivered, then deduplicated. Celery
        # warns at every reconnect while this is False (quiet_celery silences that warning).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # With one job prefetched per process there is nothing to reduce after a reconnect, and
        # Redis's per-consumer QoS skipped it anyway, saying so at every reconnect.
        worker_enable_prefetch_count_reduction=False,
        task_default_queue=CLASSIFY_QUEUE,
        task_routes={
            CLASSIFY_TASK: {"queue": CLASSIFY_QUEUE},
            RETRAIN_TASK: {"queue": TRAINING_QUEUE},
        },
        worker_hijack_root_logger=False,
        timezone=None,
        enable_utc=False,
    )
    app.conf.beat_schedule = {
        "nightly-retrain": {"task": RETRAIN_TASK, "schedule": cron(settings.retrain_cron),
                            "options": {"queue": TRAINING_QUEUE}},
    }
    return app


def classify_time_limits(settings: Settings) -> tuple[float, float]:
    """Celery's soft and hard time limits on a classify job, in seconds. The batch's own limit
    (MOODWATCH_BATCH_TIME_LIMIT) gives up a slow decode and still records every row; these are
    the backstop for a stall anywhere else (the model still loading, a database or file system
    that stopped answering). The soft one raises in the task, which retries the job; the hard one
    kills the pool process (C code that never returns) and Celery starts another. Reading,
    scoring and writing a batch take seconds: 30 s past the decode limit is room enough, and 15 s
    more lets the task log the soft one and retry. The retrain task has no limit: it runs minutes."""
    soft = settings.batch_time_limit + 30
    return soft, soft + 15

