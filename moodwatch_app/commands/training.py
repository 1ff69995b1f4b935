"""Training and measuring: `moodwatch train`, `retrain` and `evaluate`."""

from __future__ import annotations

from pathlib import Path

import click

from moodwatch.settings import MAX_BATCH_SIZE, MAX_SEED
from moodwatch_app.clierrors import fail
from moodwatch_app.output import JSON, emit, format_option
from moodwatch_app.state import CliState

TABLE_OR_JSON = "Print the outcome as JSON instead of a table."


@click.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Folder with happy/ and sad/ subfolders (default: MOODWATCH_DATA_DIR).")
@click.option("--arch", "architecture", default=None,
              help="Model architecture: colour-blind-160 (the default), colour-blind-192, colour-blind, "
                   "default or seed.")
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
@format_option(json_help=TABLE_OR_JSON)
@click.pass_obj
def train(state: CliState, data_dir, architecture, epochs, batch_size, patience, seed, promote, face_model,
          no_faces, face_epochs, face_tune, start, fmt) -> None:
    """Clean the curated folders, train a new model version, evaluate it, maybe promote it.

    Without flags it runs the nightly retrain's recipe on DIR (trainer.recipe.recipe).

    \b
    Example:
        moodwatch train --data ../shared/datasets/web-happy-sad --epochs 3
    """
    from trainer.dataset import DatasetError
    from trainer.recipe import recipe
    from trainer.report import training_json, training_report
    from trainer.training import train as run_training

    settings = state.settings
    options = recipe(settings, data_dir or settings.data_dir, architecture=architecture, epochs=epochs,
                     batch_size=batch_size, patience=patience, seed=seed, force_promote=promote,
                     face_base=face_model, no_faces=no_faces, face_epochs=face_epochs,
                     face_head_only=face_tune == "head", start=start, progress=fmt != JSON)
    try:
        result = run_training(settings, options)
    except (DatasetError, ValueError) as exc:
        fail(str(exc))
    emit(fmt, training_json(result), lambda: training_report(result))


@click.command()
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Most epochs (default: MOODWATCH_RETRAIN_EPOCHS).")
@click.option("--force", is_flag=True,
              help="Train even if the curated data is unchanged or below the minimum (never promoted then).")
@click.option("--enqueue", is_flag=True, help="Send it to the workers' training queue instead.")
@format_option(json_help=TABLE_OR_JSON)
@click.pass_obj
def retrain(state: CliState, epochs: int | None, force: bool, enqueue: bool, fmt: str) -> None:
    """Run the nightly retrain now: locked, skipped when data/happy and data/sad are unchanged.

    \b
    Example:
        moodwatch retrain
    """
    settings = state.settings
    if enqueue:
        from moodwatch.queue import RETRAIN_TASK, TRAINING_QUEUE, make_celery

        make_celery(settings).send_task(RETRAIN_TASK, kwargs={"epochs": epochs, "force": force},
                                        queue=TRAINING_QUEUE)
        click.echo("retrain queued on the training queue")
        return
    from moodwatch.broker import start_or_join_broker
    from trainer.report import retrain_report
    from trainer.retrain import retrain as run_retrain

    # The training lock lives in the broker's Redis: its URL is all this needs, no Celery app.
    outcome = run_retrain(settings, start_or_join_broker(settings), epochs=epochs or settings.retrain_epochs,
                          force=force, progress=fmt != JSON)
    emit(fmt, outcome, lambda: retrain_report(outcome))


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Labelled folder with happy/ and sad/ subfolders.")
@click.option("--model", "model_version", default=None, help="Version to evaluate (default: current).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="Also write per-file predictions to this CSV file (default: no file).")
@format_option(json_help="Print the figures as JSON.")
@click.pass_obj
def evaluate(state: CliState, data_dir: Path, model_version: str | None, csv_path: Path | None,
             fmt: str) -> None:
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

    settings = state.settings
    registry = Registry.for_settings(settings)
    try:
        files = labelled_files(data_dir)
        version = registry.get(model_version) if model_version else registry.require_current()
        classifier = Classifier(version, batch_size=32, precision=settings.cnn_precision)
    except (ValueError, RegistryError, ModelLoadError) as exc:
        fail(str(exc))
    t0 = time.perf_counter()
    preds = classifier.classify_paths([p for p, _ in files], settings.max_pixels)
    rate = len(files) / (time.perf_counter() - t0)
    classifier.close()
    results = [Evaluated(p.path, truth, p.score, p.error) for p, (_, truth) in zip(preds, files, strict=True)]
    figures = summarise(results)
    if csv_path:
        write_csv(results, csv_path)
    written = f"\nper-file predictions: {csv_path}" if csv_path else ""
    emit(fmt, {"version": version.name, "data": str(data_dir), "images_per_s": rate, **figures},
         lambda: format_report(f"{version.name} on {data_dir}", figures, rate) + written)


COMMANDS = (train, retrain, evaluate)
