"""The model registry: `moodwatch models` and `moodwatch models publish`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from moodwatch_app.clierrors import fail, require_folder
from moodwatch_app.output import CSV, JSON, TABLE, emit, format_option
from moodwatch_app.state import CliState

if TYPE_CHECKING:
    from moodwatch.version_summary import Listing, VersionSummary

RUNS_SHOWN = 10  # the newest training runs under the table; --json has them all


@click.group(invoke_without_command=True)
@format_option((TABLE, CSV, JSON), json_help="Machine-readable output.")
@click.pass_context
def models(ctx: click.Context, fmt: str) -> None:
    """List model versions with their test metrics; * marks the current one.

    \b
    Example:
        moodwatch models
        moodwatch models publish      # for workers on other machines
    """
    if ctx.invoked_subcommand is not None:
        return
    from moodwatch.registry import Registry
    from moodwatch.version_summary import ROW_COLUMNS, list_versions

    settings = ctx.find_object(CliState).settings
    require_folder(settings.model_dir, "MOODWATCH_MODEL_DIR")
    registry = Registry.for_settings(settings)
    listing = list_versions(registry)
    rows = [v.row() for v in listing.versions]
    emit(fmt, {"versions": rows, "runs": listing.runs}, lambda: _listing_text(listing, registry.describe()),
         rows=lambda: rows, columns=ROW_COLUMNS)


def _version_line(v: VersionSummary) -> str:
    def fig(key: str) -> str:
        value = v.figure(key)
        return "-" if value is None else f"{value:.3f}"

    n = v.figure("n")
    return (f"{'*' if v.current else ' '} {v.name:<44} {v.architecture:<13} "
            f"acc {fig('accuracy')}  prec {fig('precision')}  rec {fig('recall')}  F1 {fig('f1')}  "
            f"ECE {fig('ece')}  n {n if n is not None else '-'}")


def _run_line(run: dict[str, Any]) -> str:
    tested = f"n {run['test_n']}" if run.get("test_n") else ""
    return (f"  {run.get('at', '?')[:19]}  {run.get('outcome', '?'):<9} "
            f"{run.get('version') or '-':<44} {tested:<6} {run.get('reason', '')}")


def _listing_text(listing: Listing, where: str) -> str:
    lines = [] if listing.versions else [f"no model versions in {where}"]
    lines += [_version_line(v) for v in listing.versions]
    if listing.runs:
        lines += ["", "training runs (newest last):", *map(_run_line, listing.runs[-RUNS_SHOWN:])]
    return "\n".join(lines)


@models.command("publish")
@click.argument("version", required=False)
@click.pass_obj
def models_publish(state: CliState, version: str | None) -> None:
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

    settings = state.settings
    try:
        published, current = publish(settings, open_database(settings.database), version)
    except (RegistryError, PublicationError, OSError) as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(one_line(mask(f"cannot publish to the database: {getattr(exc, 'orig', None) or exc}")))
    click.echo(f"published {published.name}" + (" (current for database-sourced workers)" if current
                                                 else " (not current: promote it to serve it)"))


COMMANDS = (models,)
