"""The long-running parts: `moodwatch run`, `watch`, `worker`, `beat`, `web`, and `bench`."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import click

from moodwatch.settings import MAX_BATCH_SIZE
from moodwatch_app.clierrors import fail, require_folder
from moodwatch_app.state import CliState

MIN_WEB_TOKEN = 16  # characters of MOODWATCH_WEB_TOKEN needed to bind off loopback


def stop_on_signals() -> threading.Event:
    import signal

    stop = threading.Event()
    # SIGHUP too: a closed terminal stops the service the same clean way as Ctrl-C.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@click.command()
@click.option("--polling", is_flag=True, help="Watch the inbox by polling (network mounts).")
@click.option("--no-web", is_flag=True, help="Do not start the review page.")
@click.option("--no-beat", is_flag=True, help="Do not schedule the nightly retrain.")
@click.pass_obj
def run(state: CliState, polling: bool, no_web: bool, no_beat: bool) -> None:
    """Run everything: watcher, worker, nightly retraining and the review page.

    With no MOODWATCH_BROKER_URL an embedded Redis is started; with no MOODWATCH_DATABASE_URL
    results go to SQLite under the data folder.

    \b
    Example:
        moodwatch run
        MOODWATCH_BROKER_URL=redis://redis:6379/0 \\
        MOODWATCH_DATABASE_URL=postgresql://postgres@db/moodwatch moodwatch run
    """
    from moodwatch.registry import Registry
    from moodwatch_app.supervisor import run_all

    settings = state.service_settings()
    # Before any child reads the registry: what an older release trained into MODEL_DIR moves out.
    Registry.for_settings(settings, migrate=True)
    sys.exit(run_all(settings, stop_on_signals(), polling=polling, web=not no_web, beat=not no_beat,
                     say=click.echo))


@click.command()
@click.option("--polling", is_flag=True,
              help="Poll the folder instead of native events (network and container mounts).")
@click.pass_obj
def watch(state: CliState, polling: bool) -> None:
    """Watch the inbox and queue every settled photo; record every rejection.

    \b
    Example:
        MOODWATCH_INBOX=/srv/photos moodwatch watch --polling
    """
    from db.migrate import open_database
    from moodwatch.servicelock import hold_role
    from watcher.events import InotifyLimitError
    from watcher.sender import celery_sender
    from watcher.service import Watcher

    settings = state.settings
    require_folder(settings.inbox_dir, "MOODWATCH_INBOX")
    hold_role(settings.data_dir, "watch")  # one watcher per data folder: no photo sent twice
    sessions = open_database(settings.database)
    watcher = Watcher(settings, celery_sender(settings), sessions, polling=polling)
    try:
        watcher.run(stop_on_signals())
    except InotifyLimitError as exc:
        fail(str(exc))


@click.command()
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=None,
              help="Worker processes (default: MOODWATCH_WORKER_CONCURRENCY, 2).")
@click.option("-Q", "--queues", default="classify,training", show_default=True)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("-n", "--hostname", default=None, help="Celery node name (default worker@%h).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve this node's Prometheus metrics on this port (default: none).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True,
              help="Address the metrics endpoint binds.")
@click.pass_obj
def worker(state: CliState, concurrency, queues, loglevel, hostname, metrics_port, metrics_host) -> None:
    """Run a Celery worker: batched classification, and the training queue.

    \b
    Example:
        MOODWATCH_BROKER_URL=redis://localhost:6379/0 moodwatch worker -c 2 --metrics-port 9108
    """
    from db.migrate import upgrade

    settings = state.settings
    if metrics_port is not None:
        _start_worker_metrics(settings, metrics_port, metrics_host)
    concurrency = concurrency or settings.worker_concurrency
    # Each pool process runs its own TensorFlow: share the cores instead of oversubscribing them.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 2) // concurrency)))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    upgrade(settings.database)
    from worker.tasks import celery_app

    app = celery_app(settings)
    argv = ["worker", "-Q", queues, "-c", str(concurrency), "-P", "prefork",
            "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["-n", hostname]
    app.worker_main(argv)


def _start_worker_metrics(settings: Any, port: int, host: str) -> None:
    """The node's metrics endpoint, in this (the worker's main) process. prometheus_client's
    multiprocess folder is set before anything imports it (worker.tasks does): the pool
    processes Celery forks write their figures there, and this process serves their sum."""
    import tempfile

    if "prometheus_client" in sys.modules:  # its value class is chosen when it is imported
        fail("internal: prometheus_client was imported before its multiprocess folder was set")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="moodwatch-metrics-")  # fresh
    from moodwatch.metrics import serve_worker_metrics

    try:
        serve_worker_metrics(settings, port, host)
    except OSError as exc:
        fail(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}")


@click.command()
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_obj
def beat(state: CliState, loglevel: str) -> None:
    """Run the scheduler that sends the nightly retrain (run exactly one).

    \b
    Example:
        MOODWATCH_RETRAIN_CRON="30 3 * * *" moodwatch beat
    """
    from moodwatch.queue import make_celery
    from moodwatch.servicelock import hold_role

    settings = state.settings
    hold_role(settings.data_dir, "beat")  # before make_celery, which may start the embedded Redis
    app = make_celery(settings)
    schedule = settings.data_dir / ".beat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.Beat(loglevel=loglevel, schedule=str(schedule)).run()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback requires MOODWATCH_WEB_TOKEN.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port (default: MOODWATCH_WEB_PORT, 8088).")
@click.pass_obj
def web(state: CliState, host: str, port: int | None) -> None:
    """Serve the review page: gallery, review queue, rejected files, models, JSON API.

    \b
    Example:
        moodwatch web                       # http://127.0.0.1:8088/
        MOODWATCH_WEB_TOKEN=$(openssl rand -hex 16) moodwatch web --host 0.0.0.0
    """
    import uvicorn

    from web.app import create_app

    settings = state.settings
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if not loopback and len(settings.web_token or "") < MIN_WEB_TOKEN:
        fail(f"binding to {host} exposes the review page: set MOODWATCH_WEB_TOKEN to a random value "
             f"of at least {MIN_WEB_TOKEN} characters first (e.g. `openssl rand -hex 16`)")
    app = create_app(settings, token=settings.web_token, host=host)
    uvicorn.run(app, host=host, port=port or settings.web_port, log_level="warning")


@click.command()
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Cycle through the photos under this folder (default: generated images).")
@click.option("--count", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Images to push through.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker nodes to start.")
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Processes per worker.")
@click.option("--batch", type=click.IntRange(1, MAX_BATCH_SIZE), default=None,
              help="Images per job (default: MOODWATCH_BATCH_SIZE).")
@click.option("--database-url", default=None,
              help="Database for the bench rows (default: a temporary SQLite file).")
@click.pass_obj
def bench(state: CliState, images, count, workers, concurrency, batch, database_url) -> None:
    """Measure end-to-end throughput (broker, worker processes, database) against naive predict
    and against the decode floor (the same photos decoded and preprocessed, no model).

    \b
    Example:
        MOODWATCH_BROKER_URL=redis://127.0.0.1:6379/3 moodwatch bench \\
            --images ../shared/datasets/web-happy-sad \\
            --database-url postgresql://postgres@127.0.0.1/test
    """
    try:
        from benchmarks.throughput import run_bench
    except ModuleNotFoundError:
        fail("the bench harness (benchmarks/throughput.py) ships with the source only; "
             "run `moodwatch bench` from a clone")

    settings = state.settings
    r = run_bench(settings, count, images, workers, concurrency, batch or settings.batch_size,
                  database_url, say=click.echo)
    click.echo(f"end-to-end: {r.end_to_end:.1f} images/s ({r.count} images in {r.seconds:.2f}s)")
    if r.without_faces is not None:
        click.echo(f"end-to-end, faces off: {r.without_faces:.1f} images/s (the same version's "
                   f"whole-image CNN alone, {r.without_faces / r.naive:.1f}x naive)")
    click.echo(f"naive: {r.naive:.1f} images/s (one model.predict per image)")
    click.echo(f"ratio: {r.ratio:.1f}x")
    click.echo(f"decode floor: {r.floor:.1f} images/s (reading, decoding and preprocessing alone, as the "
               f"worker does before any CNN, on {r.workers * r.concurrency} processes, no model)")
    click.echo(f"end-to-end / decode floor: {r.of_floor:.2f}")


COMMANDS = (run, watch, worker, beat, web, bench)
