"""Small charts of the results: classified photos per hour by label, the confidence histogram,
and a reliability diagram (calibration plot) per model version.

The figures are counted in the database (one grouped query each, never a row per photo loaded)
and drawn server-side with matplotlib's Agg backend: an SVG the stats page inlines (the pages
run no script, so there is no charting library in the browser), or the PNG `moodwatch stats
--chart` writes. Each bar carries an id (``hour-happy-23``, ``conf-sad-9``, ``band-4``), so a
test, or anyone reading the SVG, can tell the bars apart.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a server
from matplotlib.figure import Figure  # noqa: E402  (after the backend is chosen)
from sqlalchemy import ColumnElement, case, func, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from db.models import Result  # noqa: E402
from moodwatch.vocab import (
    LABELS,  # noqa: E402
    Status,  # noqa: E402
)

# Text stays text in the SVG (small, and searchable), not glyph outlines.
matplotlib.rcParams["svg.fonttype"] = "none"
matplotlib.rcParams["svg.hashsalt"] = "moodwatch"  # the same figures give the same SVG bytes
HOURS = 24
CONFIDENCE_BANDS = tuple((round(0.5 + i * 0.05, 2), round(0.55 + i * 0.05, 2)) for i in range(10))
# The trainer's calibration bands (trainer.report.CALIBRATION_BINS), so a diagram drawn from
# reviewed results reads like one drawn from a version's test figures.
CALIBRATION_BANDS = ((0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 0.95), (0.95, 1.0))
COLORS = {"happy": "#1f7a1f", "sad": "#2650a6"}  # the pages' colours for the labels
_DRAWING = threading.Lock()  # matplotlib's text layout is shared state; the web serves threads


@dataclass
class Hourly:
    """Classified photos per label in each of the last HOURS hours; start: the first hour (UTC)."""

    start: datetime
    counts: dict[str, list[int]]


@dataclass
class Band:
    lo: float
    hi: float
    n: int
    mean_confidence: float | None
    accuracy: float | None


@dataclass
class Calibration:
    """A version's reliability diagram: per confidence band, how often it was right."""

    version: str
    source: str  # where the figures come from, as the diagram's caption says it
    bands: list[Band] = field(default_factory=list)

    @property
    def n(self) -> int:
        return sum(b.n for b in self.bands)


def _band_index(column: ColumnElement, bands: tuple[tuple[float, float], ...]) -> ColumnElement:
    """Which band a value falls in, as SQL both SQLite and PostgreSQL run (the last band holds 1)."""
    return case(*[(column < hi, i) for i, (_, hi) in enumerate(bands[:-1])], else_=len(bands) - 1)


def hourly_counts(session: Session, now: datetime | None = None) -> Hourly:
    now = (now or datetime.now(UTC)).astimezone(UTC)
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    # The hour of each row, newest first: a CASE of bounds, the same SQL on every database.
    hour = case(*[(Result.classified_at >= start + timedelta(hours=k), k) for k in reversed(range(HOURS))])
    rows = select(Result.label.label("label"), hour.label("hour")).where(
        Result.status == Status.CLASSIFIED, Result.classified_at >= start,
        Result.classified_at < start + timedelta(hours=HOURS)).subquery()
    # Grouped outside: PostgreSQL would not match a GROUP BY of a CASE with bound parameters.
    counts = {label: [0] * HOURS for label in LABELS}
    for label, k, n in session.execute(
            select(rows.c.label, rows.c.hour, func.count()).group_by(rows.c.label, rows.c.hour)):
        if label in counts and k is not None:
            counts[label][k] = n
    return Hourly(start, counts)


def confidence_histogram(session: Session) -> dict[str, list[int]]:
    """Classified photos per label in each band of CONFIDENCE_BANDS, over the whole table."""
    rows = select(Result.label.label("label"),
                  _band_index(Result.confidence, CONFIDENCE_BANDS).label("band")).where(
        Result.status == Status.CLASSIFIED, Result.confidence.is_not(None)).subquery()
    out = {label: [0] * len(CONFIDENCE_BANDS) for label in LABELS}
    for label, band, n in session.execute(
            select(rows.c.label, rows.c.band, func.count()).group_by(rows.c.label, rows.c.band)):
        if label in out:
            out[label][band] = n
    return out


def calibration_for(session: Session, version: str, metrics: dict[str, Any]) -> Calibration:
    """From the version's own test figures when they have per-band rows, else from the results
    people reviewed (labelled happy or sad on the review page)."""
    table = (metrics.get("test") or {}).get("calibration")
    if table:
        return Calibration(version, f"its {metrics['test'].get('n', '?')} test photos",
                           [_band_from_row(r) for r in table])
    return _reviewed_calibration(session, version)


def _band_from_row(row: dict[str, Any]) -> Band:
    lo, hi = (float(x) for x in str(row["band"]).split("-"))
    return Band(lo, hi, int(row.get("n") or 0), row.get("mean_confidence"), row.get("accuracy"))


def _reviewed_calibration(session: Session, version: str) -> Calibration:
    rows = select(_band_index(Result.confidence, CALIBRATION_BANDS).label("band"),
                  Result.confidence.label("confidence"),
                  case((Result.label == Result.human_label, 1), else_=0).label("right")).where(
        Result.model_version == version, Result.status == Status.CLASSIFIED, Result.confidence.is_not(None),
        Result.human_label.in_(LABELS)).subquery()
    found = {band: (n, mean, right) for band, n, mean, right in session.execute(
        select(rows.c.band, func.count(), func.avg(rows.c.confidence), func.sum(rows.c.right))
        .group_by(rows.c.band))}
    bands = []
    for i, (lo, hi) in enumerate(CALIBRATION_BANDS):
        n, mean, right = found.get(i, (0, None, 0))
        bands.append(Band(lo, hi, n, float(mean) if n else None, int(right) / n if n else None))
    total = sum(b.n for b in bands)
    return Calibration(version, f"{total} result{'s' if total != 1 else ''} people reviewed", bands)


def local_zone() -> tzinfo:
    """The server's time zone: the pages show its local time, named."""
    return datetime.now().astimezone().tzinfo or UTC


def stats_figure(hourly: Hourly, histogram: dict[str, list[int]], zone: tzinfo | None = None) -> Figure:
    """Per hour by label (stacked) beside the confidence histogram (per label, side by side).
    Only bars with photos are drawn, so the SVG holds one bar per non-empty count."""
    zone = zone or local_zone()
    fig = Figure(figsize=(10, 3.4), dpi=100)
    per_hour, conf = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    _draw_hourly(per_hour, hourly, zone)
    _draw_histogram(conf, histogram)
    fig.tight_layout()
    return fig


def _draw_hourly(ax: Any, hourly: Hourly, zone: tzinfo) -> None:
    bottom = [0] * HOURS
    for label in LABELS:
        for k, n in enumerate(hourly.counts[label]):
            if n:
                ax.bar(k, n, bottom=bottom[k], width=0.8, color=COLORS[label], gid=f"hour-{label}-{k}",
                       label=label if k == _first(hourly.counts[label]) else None)
                bottom[k] += n
    ticks = list(range(HOURS - 1, -1, -3))[::-1]
    ax.set_xticks(ticks, [(hourly.start + timedelta(hours=k)).astimezone(zone).strftime("%H:%M")
                          for k in ticks])
    ax.set_xlim(-0.6, HOURS - 0.4)
    zone_name = hourly.start.astimezone(zone).strftime("%Z") or "local time"
    ax.set_title(f"Classified per hour, last {HOURS} h ({zone_name})", fontsize=10)
    ax.set_ylabel("photos")
    if not any(bottom):
        ax.text(0.5, 0.5, "nothing classified in this time", transform=ax.transAxes, ha="center",
                color="#666")
    else:
        ax.legend(fontsize=8, loc="best")
    ax.yaxis.get_major_locator().set_params(integer=True)


def _draw_histogram(ax: Any, histogram: dict[str, list[int]]) -> None:
    width = 0.05 / len(LABELS)
    for j, label in enumerate(LABELS):
        for k, n in enumerate(histogram[label]):
            if n:
                lo = CONFIDENCE_BANDS[k][0]
                ax.bar(lo + width * (j + 0.5), n, width=width * 0.9, color=COLORS[label],
                       gid=f"conf-{label}-{k}", label=label if k == _first(histogram[label]) else None)
    ax.set_xlim(0.5, 1.0)
    ax.set_title("Confidence of the classified photos", fontsize=10)
    ax.set_xlabel("confidence")
    ax.set_ylabel("photos")
    if not any(map(any, histogram.values())):
        ax.text(0.5, 0.5, "no classified photos yet", transform=ax.transAxes, ha="center", color="#666")
    else:
        ax.legend(fontsize=8, loc="best")
    ax.yaxis.get_major_locator().set_params(integer=True)


def _first(counts: list[int]) -> int:
    return next((k for k, n in enumerate(counts) if n), -1)


def calibration_figure(cal: Calibration) -> Figure:
    """Accuracy per confidence band against the diagonal of perfect calibration: a bar under
    the diagonal is a band where the model was surer than it was right."""
    fig = Figure(figsize=(3.6, 3.2), dpi=100)
    ax = fig.subplots()
    ax.plot([0.5, 1.0], [0.5, 1.0], color="#999", linestyle="--", linewidth=1, label="calibrated")
    for k, b in enumerate(cal.bands):
        if b.n and b.accuracy is not None:
            ax.bar(b.lo, b.accuracy, width=b.hi - b.lo, align="edge", color="#5b8fd6", edgecolor="#24344d",
                   linewidth=0.6, gid=f"band-{k}", label="accuracy" if k == _first([x.n for x in cal.bands])
                   else None)
            ax.text(b.lo + (b.hi - b.lo) / 2, min(b.accuracy, 0.98) + 0.01, str(b.n), ha="center",
                    va="bottom", fontsize=7, color="#333")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("confidence", fontsize=8)
    ax.set_ylabel("share right", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"from {cal.source}", fontsize=8)
    if not cal.n:
        ax.text(0.75, 0.5, "no figures yet:\nreview some of its results", ha="center", va="center",
                fontsize=8, color="#666")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def svg(fig: Figure) -> str:
    """The figure as SVG markup to put inside a page: no XML declaration, no doctype, fixed
    metadata (the same figures give the same bytes)."""
    buffer = io.StringIO()
    with _DRAWING:
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def png(fig: Figure, path: Path) -> None:
    with _DRAWING:
        fig.savefig(path, format="png", dpi=100)

