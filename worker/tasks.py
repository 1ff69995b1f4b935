"""Celery tasks: thin wrappers that hand the job to plain functions.

Importing this module builds nothing: it reads no settings and starts no broker. The tasks are
shared tasks, which every Celery app takes when it is finalised; the composition root calls
`celery_app(settings)` for the configured app, and this process's state (worker.state) is made
with it. Per-process state (database engine, loaded model) is created inside the pool process,
never in the parent: TensorFlow is not fork-safe. The model is loaded when the pool process
starts.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from celery import Celery, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun, worker_process_init, worker_process_shutdown
from sqlalchemy.exc import InterfaceError, OperationalError

from moodwatch import metrics
from moodwatch.heartbeat import Heartbeat
from moodwatch.modelio import ModelLoadError
from moodwatch.queue import CLASSIFY_TASK, RETRAIN_TASK, classify_time_limits, make_celery
from moodwatch.registry import RegistryError
from moodwatch.settings import Settings
from worker.processing import process_batch
from worker.state import WorkerProcess

log = logging.getLogger("moodwatch.worker")

_process: WorkerProcess | None = None  # set by celery_app(); a pool process inherits it


def celery_app(settings: Settings) -> Celery:
    """The worker's Celery app, configured from settings (making it may start the embedded
    Redis), and this process's state. The classify task's limits and retries come from the
    settings, as Celery's task annotations: the task itself is made before any are read."""
    global _process
    app = make_celery(settings)
    soft, hard = classify_time_limits(settings)
    app.conf.task_annotations = {CLASSIFY_TASK: {"max_retries": settings.job_retries,
                                                 "soft_time_limit": soft, "time_limit": hard}}
    _process = WorkerProcess(settings, app.conf.broker_url)
    return app


def _here() -> WorkerProcess:
    if _process is None:
        raise RuntimeError("the worker's tasks run in an app made by worker.tasks.celery_app(settings)")
    return _process


@worker_process_init.connect
def _load_model_at_start(**_: Any) -> None:
    """A new pool process loads and warms up the model now, not on its first job (which would
    wait tens of seconds), and follows model changes. In a thread: Celery gives this signal's
    handlers 4 s before it takes the process for dead."""
    here = _here()
    here.pool_process = True
    models = here.models()
    models.watch()
    # Readiness for `moodwatch run` (its banner), `moodwatch status` and the page's status strip.
    here.heartbeat = Heartbeat(here.broker_url, metrics.tracking_model(models.readiness)).start()


@worker_process_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    """A pool process that stops says so at once (a dead one's record expires on its own)."""
    if _process is not None and _process.heartbeat is not None:
        _process.heartbeat.stop()
        _process.heartbeat = None
    metrics.mark_dead(os.getpid())  # its model series leaves the node's /metrics with it


@task_prerun.connect
def _hold_off_sigterm(task: Any = None, **_: Any) -> None:
    """A SIGTERM sent to every process at once (systemd's control-group stop, `kill -- -PGID`)
    would kill a pool process between a batch's commit and its files' moves. While a batch runs
    the pool process ignores it: the main process got the same signal, and its warm shutdown
    waits for the batch and then closes the pool. Only in a pool process: in a main process
    (a solo pool) SIGTERM is Celery's own shutdown signal."""
    if _process is not None and _process.pool_process and task is not None and task.name == CLASSIFY_TASK:
        _process.sigterm_before = (signal.signal(signal.SIGTERM, signal.SIG_IGN),)


@task_postrun.connect
def _take_sigterm_again(**_: Any) -> None:
    """The handler the pool process had before the batch (Celery's own choice for its children)."""
    if _process is not None and _process.sigterm_before is not None:
        signal.signal(signal.SIGTERM, _process.sigterm_before[0])
        _process.sigterm_before = None


@shared_task(
    name=CLASSIFY_TASK,
    bind=True,
    # A database outage, or no loadable model yet: retry later. Only errors of the connection
    # count as an outage; a statement the database refuses would fail the same way every time.
    # When the retries run out (MOODWATCH_JOB_RETRIES, see celery_app) the job is dropped, and the
    # watcher's rescan sends its files again (MOODWATCH_RESEND_SECONDS).
    autoretry_for=(OperationalError, InterfaceError, RegistryError, ModelLoadError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
)
def classify_batch(self, items: Any, move_files: Any = True, dedupe: Any = True) -> dict[str, int]:
    """Classify a batch of files; database outages are retried with backoff."""
    if not isinstance(items, list):
        log.error("refused a job whose items are not a list (%s)", type(items).__name__)
        return {"refused": 1}
    move_files, dedupe = move_files is not False, dedupe is not False  # booleans, whatever was sent
    here = _here()
    unreachable: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        counts = process_batch(items, here.settings, here.sessions(), here.models().get(),
                               move_files=move_files, dedupe=dedupe, retry_sink=unreachable,
                               claims=here.claims())
    except SoftTimeLimitExceeded as exc:
        # Not a slow decode (the batch's own limit ends those, with rows): something else stalled,
        # the model still loading or a database or file system not answering. The rows are one
        # transaction, written whole or not at all, and a rerun skips those written: the job is
        # retried like a database outage, and once its retries are spent the watcher's rescan
        # sends its files again, as for any job that was lost.
        log.warning("a batch of %d file(s) ran past its %g s time limit outside decoding (the model "
                    "still loading, a database or file system not answering?); retrying it",
                    len(items), self.soft_time_limit)
        raise self.retry(exc=exc, countdown=min(30, 2 ** self.request.retries)) from exc
    metrics.observe_batch(items, counts, time.monotonic() - started)
    if unreachable:
        # A new job, so that any worker (on any machine) may take it, after a pause.
        attempt = max(m["attempts"] for m in unreachable)
        self.app.send_task(CLASSIFY_TASK, args=[unreachable],
                           kwargs={"move_files": move_files, "dedupe": dedupe}, countdown=5 * 2**attempt)
        log.warning("%d file(s) handed back to the queue (%d not reachable from this worker, %d not "
                    "decoded before the batch's time limit)", len(unreachable), counts.get("retried", 0),
                    counts.get("requeued", 0))
    return counts


@shared_task(name=RETRAIN_TASK, acks_late=False)
def retrain(epochs: int | None = None, force: bool = False) -> dict[str, Any]:
    """The nightly retrain: locked, skipped when the curated data is unchanged.

    acks_late is off: a training run that died is not worth replaying blindly; the next
    night (or `moodwatch retrain`) starts a fresh one. No time limit: it runs minutes.
    """
    from trainer.retrain import retrain as run

    here = _here()
    outcome = run(here.settings, here.broker_url, epochs=epochs or here.settings.retrain_epochs,
                  force=force)
    log.info("retrain: %s", outcome)
    return outcome
