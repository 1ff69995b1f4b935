"""Commands on photos named on the command line: `moodwatch submit`, `classify` and `label`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from moodwatch.vocab import LABELS
from moodwatch_app.clierrors import fail
from moodwatch_app.output import CSV, JSON, TABLE, RecordStream, format_option
from moodwatch_app.state import CliState

CLASSIFY_COLUMNS = ("file", "label", "confidence", "score_sad", "error", "model")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=False, path_type=Path))
@click.pass_obj
def submit(state: CliState, paths: tuple[Path, ...]) -> None:
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

    settings = state.settings
    # Absolute before they leave this process: a worker runs in another folder (or machine).
    # abspath, not resolve: a symbolic link must stay a link, to be refused as one.
    absolute = [Path(os.path.abspath(p)) for p in paths]
    missing = [p for p in absolute if not os.path.lexists(p)]
    for p in missing:
        click.echo(f"error: no such file or folder: {printable(str(p))}", err=True)
    if len(missing) == len(absolute):
        sys.exit(1)  # nothing to send: no database, no broker
    sessions = open_database(settings.database)
    try:
        results = submit_paths([p for p in absolute if p not in missing], settings,
                               celery_sender(settings), sessions)
    except RuntimeError as exc:
        fail(str(exc))
    for c in results:
        if c.recorded_as is not None:
            click.echo(f"{printable(c.path)}: already recorded as #{c.recorded_as}")
        else:
            click.echo(f"{printable(c.path)}: " + (f"rejected ({c.rejected})" if c.rejected else "queued"))
    if missing:
        sys.exit(1)


def _classified_line(record: dict[str, Any]) -> tuple[str, bool]:
    if record["error"]:
        return f"{record['file']}: error: {record['error']}", True
    return f"{record['file']}: {record['label']} ({record['confidence']:.1%})", False


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option((TABLE, CSV, JSON), json_help="One JSON object per file.")
@click.option("--model", "model_version", default=None, help="Version to use (default: current).")
@click.pass_obj
def classify(state: CliState, files: tuple[Path, ...], fmt: str, model_version: str | None) -> None:
    """Classify files with the current model, without the service.

    \b
    Example:
        moodwatch classify photo1.jpg photo2.png --json
    """
    from moodwatch.modelio import ModelLoadError
    from moodwatch.registry import Registry, RegistryError
    from worker.inference import Classifier

    settings = state.settings
    registry = Registry.for_settings(settings)
    try:
        version = registry.get(model_version) if model_version else registry.require_current()
        classifier = Classifier(version, batch_size=min(32, max(1, len(files))),
                                precision=settings.cnn_precision)
    except (RegistryError, ModelLoadError) as exc:
        fail(str(exc))
    out = RecordStream(fmt, CLASSIFY_COLUMNS, _classified_line)
    failed = 0
    for p in classifier.classify_paths([str(f) for f in files], settings.max_pixels):
        out.write({"file": p.path, "label": p.label, "confidence": p.confidence, "score_sad": p.score,
                   "error": p.error, "model": version.name})
        failed += p.error is not None
    classifier.close()
    if failed:
        sys.exit(1)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
# metavar: click names a bad choice by its metavar, and the default one, '{happy|sad}', read as
# a placeholder in the one-line error.
@click.argument("label", type=click.Choice(LABELS), metavar="LABEL")
@click.pass_obj
def label(state: CliState, file: Path, label: str) -> None:
    """Copy a photo into data/happy or data/sad: training data for the next nightly retrain.
    LABEL is happy or sad.

    \b
    Example:
        moodwatch label data/processed/sad/IMG_0042.jpg happy
    """
    from moodwatch.curation import label_file
    from moodwatch.images import ImageRejected

    try:
        dest = label_file(state.settings, file, label)
    except ImageRejected as exc:
        fail(f"{file} cannot be training data: {exc.reason}")
    click.echo(f"copied to {dest}")


COMMANDS = (submit, classify, label)
