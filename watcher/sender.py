"""How a batch job leaves the watcher: a `Sender` is any callable that sends one; the Celery one
sends it by task name, so the watcher never imports the worker (nor TensorFlow)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moodwatch.settings import Settings

Sender = Callable[[list[dict[str, Any]]], None]  # sends one batch job: FileJob.wire() of each file


def celery_sender(settings: Settings) -> Sender:
    from moodwatch.queue import CLASSIFY_TASK, make_celery

    app = make_celery(settings)

    def send(messages: list[dict[str, Any]]) -> None:
        # A short retry policy: on an outage the watcher keeps the files and tries again itself.
        app.send_task(CLASSIFY_TASK, args=[messages], retry=True,
                      retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2})

    return send
