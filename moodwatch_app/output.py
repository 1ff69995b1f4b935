"""One output option and one renderer for every command that prints records.

``--format table|csv|json`` picks the shape (each command offers the ones its records have);
``--json`` stays, as the shorthand for ``--format json`` that scripts already use. A command
hands its answer over once, with how to say it as text, and this module prints it.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

TABLE, CSV, JSON = "table", "csv", "json"
Records = Iterable[dict[str, Any]]


def format_option(formats: Sequence[str] = (TABLE, JSON), json_help: str = "Same as --format json.",
                  default: str = TABLE) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--format`` and its ``--json`` alias; the command receives one ``fmt`` argument."""
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def chosen(*args: Any, fmt: str, as_json: bool, **kwargs: Any) -> Any:
            return command(*args, fmt=JSON if as_json else fmt, **kwargs)

        shapes = ", ".join(formats[:-1]) + f" or {formats[-1]}"
        chosen = click.option("--json", "as_json", is_flag=True, help=json_help)(chosen)
        return click.option("--format", "fmt", type=click.Choice(formats), default=default,
                            show_default=True, help=f"Print as {shapes}.")(chosen)
    return decorate


def emit(fmt: str, data: Any, text: Callable[[], str], rows: Callable[[], Records] | None = None,
         columns: Sequence[str] = ()) -> None:
    """Print a command's answer: ``data`` as JSON, ``rows`` as CSV under ``columns``, or ``text``.
    Both text and rows are called only when that shape is asked for (a table may load rich)."""
    if fmt == JSON:
        click.echo(json.dumps(data, indent=2, default=str))
    elif fmt == CSV and rows is not None:
        write_csv(rows(), columns)
    else:
        click.echo(text())


def write_csv(rows: Records, columns: Sequence[str]) -> None:
    from db.export import write_csv_rows

    writer = csv.DictWriter(sys.stdout, fieldnames=list(columns))
    writer.writeheader()
    write_csv_rows(writer, rows)  # no cell a spreadsheet would run as a formula


class RecordStream:
    """Records printed as they come (``moodwatch classify``): JSON Lines, CSV rows under one
    header, or a line of text each; ``text`` returns the line and whether it goes to stderr."""

    def __init__(self, fmt: str, columns: Sequence[str], text: Callable[[dict[str, Any]], tuple[str, bool]]):
        self.fmt, self.columns, self.text = fmt, list(columns), text
        self._csv: csv.DictWriter | None = None

    def write(self, record: dict[str, Any]) -> None:
        from db.export import csv_cell

        if self.fmt == JSON:
            click.echo(json.dumps(record, default=str))
        elif self.fmt == CSV:
            if self._csv is None:
                self._csv = csv.DictWriter(sys.stdout, fieldnames=self.columns)
                self._csv.writeheader()
            self._csv.writerow({k: csv_cell(v) for k, v in record.items()})
        else:
            line, to_stderr = self.text(record)
            click.echo(line, err=to_stderr)


def aligned(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Plain text, each column as wide as its widest cell (rich measures; no wrapping)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, header_style=None)
    for col in header:
        table.add_column(col, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*row)
    console = Console(width=100_000, no_color=True, highlight=False, emoji=False, markup=False)
    with console.capture() as out:
        console.print(table)
    return "\n".join(line.rstrip() for line in out.get().splitlines())
