"""The Celery app's configuration and task names, shared by whoever sends or runs tasks.

Senders (watcher, CLI) use task names only, so they never import the worker or TensorFlow.
"""

from __future__ import annotations

import kombu.exceptions
import redis.exceptions
from celery import Celery

from moodwatch.broker import client_name, start_or_join_broker
from moodwatch.settings import Settings

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


def make_celery(settings: Settings) -> Celery:
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


def cron(expression: str):
    """A Celery crontab from a five-field cron expression (minute hour day month weekday)."""
    from celery.schedules import crontab

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression needs 5 fields, got {expression!r}")
    minute, hour, day, month, weekday = fields
    return crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month,
                   day_of_week=weekday)
