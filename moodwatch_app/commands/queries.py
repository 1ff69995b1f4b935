"""Read-only questions to a service: `moodwatch results`, `stats` and `status`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click

from moodwatch.vocab import LABELS, STATUSES
from moodwatch_app.clierrors import fail
from moodwatch_app.output import CSV, JSON, TABLE, aligned, emit, format_option
from moodwatch_app.state import CliState

# The results table's columns; --format csv and json carry every column of the results table.
TABLE_COLUMNS = ("id", "status", "label", "confidence", "model_version", "received_at", "file_name", "error")
SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str | None) -> datetime | None:
    """--since: an ISO date or time (local unless it says), or a span ago such as 30m or 7d."""
    from datetime import UTC, timedelta

    if not value:
        return None
    if value[-1] in SPAN_SECONDS and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * SPAN_SECONDS[value[-1]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use an ISO date/time or a span like 30m, 2h, 7d",
                                 param_hint="--since") from None
    return when if when.tzinfo else when.astimezone()


@click.command()
@click.option("--label", type=click.Choice(LABELS), help="Only this label.")
@click.option("--status", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--since", help="Received since an ISO time or a span ago (30m, 2h, 7d).")
@click.option("--model", "model_version", help="Only rows classified by this model version.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Most rows, newest first; 0 = all.")
@format_option((TABLE, CSV, JSON))
@click.pass_obj
def results(state: CliState, label, status, since, model_version, limit, fmt) -> None:
    """Query the results table.

    \b
    Example:
        moodwatch results --label sad --since 2h --format csv
    """
    from db.engine import require_existing
    from db.migrate import open_database
    from db.repository import RESULT_COLUMNS, ResultFilter, as_dict, query_results

    f = ResultFilter(label=label, status=status, since=parse_since(since), model=model_version,
                     limit=limit)
    settings = state.settings
    require_existing(settings.database)  # read-only: never an empty database of its own
    sessions = open_database(settings.database)
    with sessions() as session:
        rows = [as_dict(r) for r in query_results(session, f)]
    emit(fmt, rows, lambda: aligned(TABLE_COLUMNS, map(_table_cells, rows)), rows=lambda: rows,
         columns=RESULT_COLUMNS)


def _table_cells(r: dict[str, Any]) -> tuple[str, ...]:
    conf = "" if r["confidence"] is None else f"{r['confidence']:.3f}"
    return (str(r["id"]), r["status"], r["label"] or "", conf, r["model_version"] or "",
            (r["received_at"] or "")[:19], r["file_name"], r["error"] or "")


@click.command()
@click.option("--chart", "chart", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png", help="Also write a chart: classified photos per hour by label, and "
              "the confidence histogram.")
@format_option()
@click.pass_obj
def stats(state: CliState, chart: Path | None, fmt: str) -> None:
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
        fail(f"--chart writes a PNG: name the file something.png, not {chart.name}")
    settings = state.settings
    require_existing(settings.database)  # read-only: never an empty database of its own
    with open_database(settings.database)() as session:
        s = compute(session)
        if chart is not None:
            _write_stats_chart(session, chart)
    emit(fmt, s, lambda: _stats_text(s, chart))


def _stats_text(s: dict[str, Any], chart: Path | None) -> str:
    lines = [f"total rows: {s['total']}"]
    lines += [f"  status {k:<11} {v}" for k, v in sorted(s["by_status"].items())]
    lines += [f"  label  {k:<11} {v}" for k, v in sorted(s["by_label"].items())]
    lines.append(f"last hour: {s['last_hour']} classified ({s['per_minute_last_hour']}/min)")
    if chart is not None:
        lines.append(f"chart: {chart}")
    return "\n".join(lines)


def _write_stats_chart(session: Any, path: Path) -> None:
    """The stats page's chart as a PNG (matplotlib loads only when one is asked for)."""
    from web import charts

    figure = charts.stats_figure(charts.hourly_counts(session), charts.confidence_histogram(session))
    charts.png(figure, path)


@click.command()
@format_option()
@click.pass_obj
def status(state: CliState, fmt: str) -> None:
    """Inbox backlog, queue length, workers alive, current model.

    \b
    Example:
        moodwatch status
    """
    from db.engine import database_problem
    from moodwatch.redact import mask
    from moodwatch.status import collect
    from moodwatch_app.clierrors import one_line

    settings = state.settings
    s = collect(settings)
    problem = database_problem(settings.database)
    if problem:
        s["database_error"] = problem = one_line(mask(problem))
    emit(fmt, s, lambda: "\n".join(f"{key.replace('_', ' ')}: {value}" for key, value in s.items()))
    if problem:
        fail(problem)  # the rest is shown, but a service without its database is not healthy


COMMANDS = (results, stats, status)
