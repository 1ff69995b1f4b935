"""Results rows as CSV, for `moodwatch results --format csv` and /api/results.csv alike.

A file name is whatever the person who dropped the file chose: `=HYPERLINK("http://x","y").jpg`
would run as a formula in the spreadsheet that opens the export. Every text cell that a
spreadsheet would read as a formula gets a leading single quote (OWASP's advice for CSV
injection); the cell then reads as the text it is.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

# What a spreadsheet takes for the start of a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """The value as a CSV cell that no spreadsheet runs: text starting like a formula is quoted."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv_rows(writer: csv.DictWriter, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows through a DictWriter, every cell made safe by csv_cell."""
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
