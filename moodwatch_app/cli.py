"""The ``moodwatch`` command: parses options, calls the library, formats the answer.

Services are imported inside each command, so ``moodwatch watch`` never loads TensorFlow and
``moodwatch --help`` is instant.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from moodwatch.settings import MAX_BATCH_SIZE, MAX_SEED, get_settings
from moodwatch.vocab import LABELS, STATUSES
from moodwatch_app.clierrors import Cli
from moodwatch_app.clierrors import fail as _fail

MIN_WEB_TOKEN = 16  # characters of MOODWATCH_WEB_TOKEN needed to bind off loopback


def _require_folder(path: Path, variable: str) -> None:
    """A folder setting that names a file is refused before anything starts."""
    if path.exists() and not path.is_dir():
        _fail(f"{path} is not a folder (set by {variable}, or its default)")


@click.group(cls=Cli)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """moodwatch: classify photos of people as happy or sad.

    \b
    Example:
        moodwatch run              # watcher + worker + nightly retraining + review page
        moodwatch classify a.jpg   # try the current model on a file
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from moodwatch.redact import install

    install()  # no password of a database or broker URL in any log line
    # TensorFlow's C++ start-up chatter is noise on a CLI.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Folder with happy/ and sad/ subfolders (default: MOODWATCH_DATA_DIR).")
@click.option("--arch", "architecture", default=None,
              help="Model architecture: default or seed (default: default).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Most epochs (default: MOODWATCH_RETRAIN_EPOCHS; early stopping may end sooner).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=None,
              help="Default: the recipe's (16).")
@click.option("--patience", type=click.IntRange(min=0), default=None,
              help="Early-stopping patience in epochs (default 12).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None,
              help="Split and training seed (default: MOODWATCH_SEED).")
@click.option("--promote", is_flag=True,
              help="Make this version current even if it is worse (never below the curated minimum).")
@click.option("--face-model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Face model (.keras) to fine-tune (default: the current version's, if it has one).")
@click.option("--no-faces", is_flag=True, help="Whole-image model only, no face detection.")
@click.option("--face-epochs", type=click.IntRange(min=0), default=None,
              help="Fine-tuning epochs of the face model (default: the recipe's, 3).")
@click.option("--face-tune", type=click.Choice(["all", "head"]), default="all", show_default=True,
              help="Fine-tune every layer of the face model, or its dense head only.")
@click.option("--start", type=click.Choice(["current", "scratch"]), default="current", show_default=True,
              help="Fine-tune the current version's whole-image CNN, or train one from scratch.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON instead of a table.")
def train(data_dir, architecture, epochs, batch_size, patience, seed, promote, face_model, no_faces,
          face_epochs, face_tune, start, as_json) -> None:
    """Clean the curated folders, train a new model version, evaluate it, maybe promote it.

    Without flags it runs the nightly retrain's recipe on DIR (trainer.training.recipe).

    \b
    Example:
        moodwatch train --data ../shared/datasets/web-happy-sad --epochs 3
    """
    from trainer.dataset import DatasetError
    from trainer.recipe import recipe
    from trainer.training import train as run_training

    settings = get_settings()
    options = recipe(settings, data_dir or settings.data_dir, architecture=architecture, epochs=epochs,
                     batch_size=batch_size, patience=patience, seed=seed, force_promote=promote,
                     face_base=face_model, no_faces=no_faces, face_epochs=face_epochs,
                     face_head_only=face_tune == "head", start=start, progress=not as_json)
    try:
        result = run_training(settings, options)
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps({"version": result.version.name, "decision": result.decision.to_json(),
                               "test": result.metrics, "timings": result.timings}, indent=2, default=str))
        return
    m = result.metrics
    click.echo(f"cleaning: {result.clean.summary()}")
    for src, dest, reason in result.clean.quarantined:
        click.echo(f"  quarantined {src} -> {dest}: {reason}")
    click.echo(f"version: {result.version.name}  ({result.version.path})")
    cm = m["confusion_matrix"]["rows_true_cols_predicted"]
    click.echo(f"confusion on the test photos (rows true happy/sad, cols predicted happy/sad): {cm}")
    t = result.timings
    click.echo(f"time: {t['total_s']:.1f}s total, {t['epoch_s']:.2f}s per epoch")
    click.echo(_decision_table(result.decision.to_json(), result.version.name,
                               (result.current_metrics or {}).get("version")))


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List model versions with their test metrics; * marks the current one.

    \b
    Example:
        moodwatch models
        moodwatch models publish      # for workers on other machines
    """
    if ctx.invoked_subcommand is not None:
        return
    from moodwatch.registry import Registry

    settings = get_settings()
    _require_folder(settings.model_dir, "MOODWATCH_MODEL_DIR")
    registry = Registry.for_settings(settings)
    current = registry.current_name()
    rows = []
    for version in registry.versions():
        metrics = version.metrics().get("test", {})
        rows.append({
            "version": version.name,
            "current": version.name == current,
            "architecture": version.architecture,
            "accuracy": metrics.get("accuracy"),
            "precision": metrics.get("precision"),
            "recall": metrics.get("recall"),
            "f1": metrics.get("f1"),
            "ece": metrics.get("ece"),
            "test_images": metrics.get("n"),
        })
    if as_json:
        click.echo(json.dumps({"versions": rows, "runs": registry.runs()}, indent=2))
        return
    if not rows:
        click.echo(f"no model versions in {registry.describe()}")
    for r in rows:
        def fig(key: str, r=r) -> str:
            return "-" if r[key] is None else f"{r[key]:.3f}"

        click.echo(
            f"{'*' if r['current'] else ' '} {r['version']:<44} {r['architecture']:<13} "
            f"acc {fig('accuracy')}  prec {fig('precision')}  rec {fig('recall')}  F1 {fig('f1')}  "
            f"ECE {fig('ece')}  n {r['test_images'] if r['test_images'] is not None else '-'}"
        )
    runs = registry.runs()
    if runs:
        click.echo("\ntraining runs (newest last):")
        for run in runs[-10:]:
            tested = f"n {run['test_n']}" if run.get("test_n") else ""
            click.echo(f"  {run.get('at', '?')[:19]}  {run.get('outcome', '?'):<9} "
                       f"{run.get('version') or '-':<44} {tested:<6} {run.get('reason', '')}")


@models.command("publish")
@click.argument("version", required=False)
def models_publish(version: str | None) -> None:
    """Publish a version (default: the current one) to the database, for workers with
    MOODWATCH_MODEL_SOURCE=database. The current version becomes theirs too; promotion
    publishes on its own, so this is for versions from before, or the shipped one.

    \b
    Example:
        MOODWATCH_DATABASE_URL=postgresql://moodwatch@db/moodwatch moodwatch models publish
    """
    from sqlalchemy.exc import SQLAlchemyError

    from db.migrate import open_database
    from moodwatch.publication import PublicationError, publish
    from moodwatch.redact import mask
    from moodwatch.registry import RegistryError
    from moodwatch_app.clierrors import one_line

    settings = get_settings()
    try:
        published, current = publish(settings, open_database(settings.database), version)
    except (RegistryError, PublicationError, OSError) as exc:
        _fail(str(exc))
        return
    except SQLAlchemyError as exc:
        _fail(one_line(mask(f"cannot publish to the database: {getattr(exc, 'orig', None) or exc}")))
        return
    click.echo(f"published {published.name}" + (" (current for database-sourced workers)" if current
                                                 else " (not current: promote it to serve it)"))


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option("--model", "model_version", default=None, help="Version to use (default: current).")
def classify(files, as_json: bool, model_version: str | None) -> None:
    """Classify files with the current model, without the service.

    \b
    Example:
        moodwatch classify photo1.jpg photo2.png --json
    """
    from moodwatch.modelio import ModelLoadError
    from moodwatch.registry import Registry, RegistryError
    from worker.inference import Classifier

    settings = get_settings()
    registry = Registry.for_settings(settings)
    try:
        version = registry.get(model_version) if model_version else registry.require_current()
        classifier = Classifier(version, batch_size=min(32, max(1, len(files))))
    except (RegistryError, ModelLoadError) as exc:
        _fail(str(exc))
        return
    failed = 0
    for p in classifier.classify_paths([str(f) for f in files], settings.max_pixels):
        if as_json:
            click.echo(json.dumps({"file": p.path, "label": p.label, "confidence": p.confidence,
                                   "score_sad": p.score, "error": p.error,
                                   "model": version.name}))
        elif p.error:
            click.echo(f"{p.path}: error: {p.error}", err=True)
        else:
            click.echo(f"{p.path}: {p.label} ({p.confidence:.1%})")
        failed += p.error is not None
    classifier.close()
    if failed:
        sys.exit(1)


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Labelled folder with happy/ and sad/ subfolders.")
@click.option("--model", "model_version", default=None, help="Version to evaluate (default: current).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="Also write per-file predictions to this CSV file (default: no file).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def evaluate(data_dir, model_version, csv_path, as_json) -> None:
    """Measure a model on any labelled folder; it never trains on what it evaluates.

    \b
    Example:
        moodwatch evaluate --data ../shared/datasets/fer2013-happy-sad/validation
    """
    import time

    from moodwatch.modelio import ModelLoadError
    from moodwatch.registry import Registry, RegistryError
    from trainer.report import Evaluated, format_report, labelled_files, summarise, write_csv
    from worker.inference import Classifier

    settings = get_settings()
    registry = Registry.for_settings(settings)
    try:
        files = labelled_files(data_dir)
        version = registry.get(model_version) if model_version else registry.require_current()
        classifier = Classifier(version, batch_size=32)
    except (ValueError, RegistryError, ModelLoadError) as exc:
        _fail(str(exc))
        return
    t0 = time.perf_counter()
    preds = classifier.classify_paths([p for p, _ in files], settings.max_pixels)
    rate = len(files) / (time.perf_counter() - t0)
    classifier.close()
    results = [Evaluated(p.path, truth, p.score, p.error) for p, (_, truth) in zip(preds, files, strict=True)]
    figures = summarise(results)
    if csv_path:
        write_csv(results, csv_path)
    if as_json:
        click.echo(json.dumps({"version": version.name, "data": str(data_dir), "images_per_s": rate,
                               **figures}, indent=2))
    else:
        click.echo(format_report(f"{version.name} on {data_dir}", figures, rate))
        if csv_path:
            click.echo(f"per-file predictions: {csv_path}")


@main.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply schema migrations (the service also does this on start).

    \b
    Example:
        MOODWATCH_DATABASE_URL=postgresql://postgres@localhost/moodwatch moodwatch db upgrade
    """
    from db.migrate import current_revision, upgrade

    url = get_settings().database
    upgrade(url)
    click.echo(f"database at revision {current_revision(url)}")


def _parse_since(value: str | None):
    from datetime import UTC, datetime, timedelta

    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use an ISO date/time or a span like 30m, 2h, 7d",
                                 param_hint="--since") from None
    return when if when.tzinfo else when.astimezone()


@main.command()
@click.option("--label", type=click.Choice(LABELS), help="Only this label.")
@click.option("--status", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--since", help="Received since an ISO time or a span ago (30m, 2h, 7d).")
@click.option("--model", "model_version", help="Only rows classified by this model version.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Most rows, newest first; 0 = all.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
def results(label, status, since, model_version, limit, fmt) -> None:
    """Query the results table.

    \b
    Example:
        moodwatch results --label sad --since 2h --format csv
    """
    from db.engine import require_existing
    from db.migrate import open_database
    from db.repository import RESULT_COLUMNS, ResultFilter, as_dict, query_results

    f = ResultFilter(label=label, status=status, since=_parse_since(since), model=model_version,
                     limit=limit)
    settings = get_settings()
    require_existing(settings.database)  # read-only: never an empty database of its own
    sessions = open_database(settings.database)
    with sessions() as session:
        rows = [as_dict(r) for r in query_results(session, f)]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        import csv

        from db.export import write_csv_rows

        writer = csv.DictWriter(sys.stdout, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        write_csv_rows(writer, rows)  # no cell a spreadsheet would run as a formula
    else:
        click.echo(_results_table(rows))


def _results_table(rows: list[dict]) -> str:
    """Plain text, each column as wide as its widest cell (rich measures; no wrapping)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, header_style=None)
    for col in ("id", "status", "label", "confidence", "model_version", "received_at", "file_name", "error"):
        table.add_column(col, no_wrap=True, overflow="ignore")
    for r in rows:
        conf = "" if r["confidence"] is None else f"{r['confidence']:.3f}"
        table.add_row(str(r["id"]), r["status"], r["label"] or "", conf, r["model_version"] or "",
                      (r["received_at"] or "")[:19], r["file_name"], r["error"] or "")
    console = Console(width=100_000, no_color=True, highlight=False, emoji=False, markup=False)
    with console.capture() as out:
        console.print(table)
    return "\n".join(line.rstrip() for line in out.get().splitlines())


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--chart", "chart", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png", help="Also write a chart: classified photos per hour by label, and "
              "the confidence histogram.")
def stats(as_json: bool, chart: Path | None) -> None:
    """Counts per label and status, and throughput over the last hour.

    \b
    Example:
        moodwatch stats --json
        moodwatch stats --chart stats.png
    """
    from db.engine import require_existing
    from db.migrate import open_database
    from db.repository import stats as compute

    if chart is not None and chart.suffix.lower() != ".png":
        _fail(f"--chart writes a PNG: name the file something.png, not {chart.name}")
    settings = get_settings()
    require_existing(settings.database)  # read-only: never an empty database of its own
    with open_database(settings.database)() as session:
        s = compute(session)
        if chart is not None:
            _write_stats_chart(session, chart)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"total rows: {s['total']}")
    for k, v in sorted(s["by_status"].items()):
        click.echo(f"  status {k:<11} {v}")
    for k, v in sorted(s["by_label"].items()):
        click.echo(f"  label  {k:<11} {v}")
    click.echo(f"last hour: {s['last_hour']} classified ({s['per_minute_last_hour']}/min)")
    if chart is not None:
        click.echo(f"chart: {chart}")


def _write_stats_chart(session: Any, path: Path) -> None:
    """The stats page's chart as a PNG (matplotlib loads only when one is asked for)."""
    from web import charts

    figure = charts.stats_figure(charts.hourly_counts(session), charts.confidence_histogram(session))
    charts.png(figure, path)


@main.command()
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=None,
              help="Worker processes (default: MOODWATCH_WORKER_CONCURRENCY, 2).")
@click.option("-Q", "--queues", default="classify,training", show_default=True)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("-n", "--hostname", default=None, help="Celery node name (default worker@%h).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve this node's Prometheus metrics on this port (default: none).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True,
              help="Address the metrics endpoint binds.")
def worker(concurrency, queues, loglevel, hostname, metrics_port, metrics_host) -> None:
    """Run a Celery worker: batched classification, and the training queue.

    \b
    Example:
        MOODWATCH_BROKER_URL=redis://localhost:6379/0 moodwatch worker -c 2 --metrics-port 9108
    """
    import os

    from db.migrate import upgrade

    settings = get_settings()
    if metrics_port is not None:
        _start_worker_metrics(settings, metrics_port, metrics_host)
    concurrency = concurrency or settings.worker_concurrency
    # Each pool process runs its own TensorFlow: share the cores instead of oversubscribing them.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 2) // concurrency)))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    upgrade(settings.database)
    from worker.tasks import app

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
        _fail("internal: prometheus_client was imported before its multiprocess folder was set")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="moodwatch-metrics-")  # fresh
    from moodwatch.metrics import serve_worker_metrics

    try:
        serve_worker_metrics(settings, port, host)
    except OSError as exc:
        _fail(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}")


@main.command()
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
def bench(images, count, workers, concurrency, batch, database_url) -> None:
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
        _fail("the bench harness (benchmarks/throughput.py) ships with the source only; "
              "run `moodwatch bench` from a clone")

    settings = get_settings()
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


def _stop_on_signals():
    import signal
    import threading

    stop = threading.Event()
    # SIGHUP too: a closed terminal stops the service the same clean way as Ctrl-C.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@main.command()
@click.option("--polling", is_flag=True,
              help="Poll the folder instead of native events (network and container mounts).")
def watch(polling: bool) -> None:
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

    settings = get_settings()
    _require_folder(settings.inbox_dir, "MOODWATCH_INBOX")
    hold_role(settings.data_dir, "watch")  # one watcher per data folder: no photo sent twice
    sessions = open_database(settings.database)
    watcher = Watcher(settings, celery_sender(settings), sessions, polling=polling)
    try:
        watcher.run(_stop_on_signals())
    except InotifyLimitError as exc:
        _fail(str(exc))


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=False, path_type=Path))
def submit(paths) -> None:
    """Send files or whole folders through the same validation and outcomes as the inbox.

    Files outside the inbox are left where they are; rejected ones get a row with the reason.

    \b
    Example:
        moodwatch submit /mnt/share/photos extra.jpg
    """
    from db.migrate import open_database
    from moodwatch.files import printable
    from watcher.sender import celery_sender
    from watcher.submit import submit_paths

    settings = get_settings()
    # Absolute before they leave this process: a worker runs in another folder (or machine).
    # abspath, not resolve: a symbolic link must stay a link, to be refused as one.
    paths = [Path(os.path.abspath(p)) for p in paths]
    missing = [p for p in paths if not os.path.lexists(p)]
    for p in missing:
        click.echo(f"error: no such file or folder: {printable(str(p))}", err=True)
    if len(missing) == len(paths):
        sys.exit(1)  # nothing to send: no database, no broker
    sessions = open_database(settings.database)
    try:
        results = submit_paths([p for p in paths if p not in missing], settings,
                               celery_sender(settings), sessions)
    except RuntimeError as exc:
        _fail(str(exc))
        return
    for c in results:
        if c.recorded_as is not None:
            click.echo(f"{printable(c.path)}: already recorded as #{c.recorded_as}")
        else:
            click.echo(f"{printable(c.path)}: " + (f"rejected ({c.rejected})" if c.rejected else "queued"))
    if missing:
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Inbox backlog, queue length, workers alive, current model.

    \b
    Example:
        moodwatch status
    """
    from db.engine import database_problem
    from moodwatch.redact import mask
    from moodwatch.status import collect
    from moodwatch_app.clierrors import one_line

    settings = get_settings()
    s = collect(settings)
    problem = database_problem(settings.database)
    if problem:
        s["database_error"] = problem = one_line(mask(problem))
    if as_json:
        click.echo(json.dumps(s, indent=2))
    else:
        for key, value in s.items():
            click.echo(f"{key.replace('_', ' ')}: {value}")
    if problem:
        _fail(problem)  # the rest is shown, but a service without its database is not healthy


@main.command()
@click.option("--polling", is_flag=True, help="Watch the inbox by polling (network mounts).")
@click.option("--no-web", is_flag=True, help="Do not start the review page.")
@click.option("--no-beat", is_flag=True, help="Do not schedule the nightly retrain.")
def run(polling: bool, no_web: bool, no_beat: bool) -> None:
    """Run everything: watcher, worker, nightly retraining and the review page.

    With no MOODWATCH_BROKER_URL an embedded Redis is started; with no MOODWATCH_DATABASE_URL
    results go to SQLite under the data folder.

    \b
    Example:
        moodwatch run
        MOODWATCH_BROKER_URL=redis://redis:6379/0 \\
        MOODWATCH_DATABASE_URL=postgresql://postgres@db/moodwatch moodwatch run
    """
    from moodwatch.home import load_settings
    from moodwatch.registry import Registry
    from moodwatch_app.supervisor import run_all

    settings = load_settings(starting_service=True)
    # Before any child reads the registry: what an older release trained into MODEL_DIR moves out.
    Registry.for_settings(settings, migrate=True)
    sys.exit(run_all(settings, _stop_on_signals(), polling=polling, web=not no_web, beat=not no_beat,
                     say=click.echo))


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run the scheduler that sends the nightly retrain (run exactly one).

    \b
    Example:
        MOODWATCH_RETRAIN_CRON="30 3 * * *" moodwatch beat
    """
    from moodwatch.queue import make_celery
    from moodwatch.servicelock import hold_role

    settings = get_settings()
    hold_role(settings.data_dir, "beat")  # before make_celery, which may start the embedded Redis
    app = make_celery(settings)
    schedule = settings.data_dir / ".beat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.Beat(loglevel=loglevel, schedule=str(schedule)).run()


@main.command()
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Most epochs (default: MOODWATCH_RETRAIN_EPOCHS).")
@click.option("--force", is_flag=True,
              help="Train even if the curated data is unchanged or below the minimum (never promoted then).")
@click.option("--enqueue", is_flag=True, help="Send it to the workers' training queue instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON instead of a table.")
def retrain(epochs: int | None, force: bool, enqueue: bool, as_json: bool) -> None:
    """Run the nightly retrain now: locked, skipped when data/happy and data/sad are unchanged.

    \b
    Example:
        moodwatch retrain
    """
    from moodwatch.queue import RETRAIN_TASK, TRAINING_QUEUE, make_celery

    settings = get_settings()
    app = make_celery(settings)
    if enqueue:
        app.send_task(RETRAIN_TASK, kwargs={"epochs": epochs, "force": force}, queue=TRAINING_QUEUE)
        click.echo("retrain queued on the training queue")
        return
    from trainer.retrain import retrain as run_retrain

    outcome = run_retrain(settings, app.conf.broker_url, epochs=epochs or settings.retrain_epochs,
                          force=force, progress=not as_json)
    if as_json:
        click.echo(json.dumps(outcome, indent=2, default=str))
    elif "decision" in outcome:
        click.echo(_decision_table(outcome["decision"], outcome["version"], outcome.get("current")))
    else:
        click.echo(f"{outcome['outcome']}: {outcome['reason']}")


def _decision_table(decision: dict[str, Any], candidate: str, current: str | None) -> str:
    """Candidate against current on the same test photos, then the decision in one line."""
    lines = [f"{'':<10} {'version':<44} {'accuracy':>8} {'F1':>6} {'ECE':>6} {'n':>5}"]
    for role, name, fig in (("candidate", candidate, decision["candidate"]),
                            ("current", current, decision.get("current"))):
        if fig:
            lines.append(f"{role:<10} {name or '-':<44} {fig['accuracy']:>8.3f} {fig['f1']:>6.3f} "
                         f"{fig['ece']:>6.3f} {fig['n']:>5}")
    return "\n".join([*lines, decision["reason"]])


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
# metavar: click names a bad choice by its metavar, and the default one, '{happy|sad}', read as
# a placeholder in the one-line error.
@click.argument("label", type=click.Choice(LABELS), metavar="LABEL")
def label(file: Path, label: str) -> None:
    """Copy a photo into data/happy or data/sad: training data for the next nightly retrain.
    LABEL is happy or sad.

    \b
    Example:
        moodwatch label data/processed/sad/IMG_0042.jpg happy
    """
    from moodwatch.curation import label_file
    from moodwatch.images import ImageRejected

    try:
        dest = label_file(get_settings(), file, label)
    except ImageRejected as exc:
        _fail(f"{file} cannot be training data: {exc.reason}")
    click.echo(f"copied to {dest}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback requires MOODWATCH_WEB_TOKEN.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port (default: MOODWATCH_WEB_PORT, 8088).")
def web(host: str, port: int | None) -> None:
    """Serve the review page: gallery, review queue, rejected files, models, JSON API.

    \b
    Example:
        moodwatch web                       # http://127.0.0.1:8088/
        MOODWATCH_WEB_TOKEN=$(openssl rand -hex 16) moodwatch web --host 0.0.0.0
    """
    import uvicorn

    from web.app import create_app

    settings = get_settings()
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if not loopback and len(settings.web_token or "") < MIN_WEB_TOKEN:
        _fail(f"binding to {host} exposes the review page: set MOODWATCH_WEB_TOKEN to a random value "
              f"of at least {MIN_WEB_TOKEN} characters first (e.g. `openssl rand -hex 16`)")
    app = create_app(settings, token=settings.web_token, host=host)
    uvicorn.run(app, host=host, port=port or settings.web_port, log_level="warning")


if __name__ == "__main__":
    main()
