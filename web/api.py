"""The JSON (and CSV) API: results, stats, models."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from db.export import write_csv_rows
from db.repository import RESULT_COLUMNS, ResultFilter, agreement_by_model, as_dict, query_results, stats
from moodwatch.version_summary import list_versions
from web.schemas import Label, MaxConf, MinConf, Model, ModelsOut, ResultOut, Since, Stats, Status, Until
from web.state import API_PAGE, WebState, db, filters, web_state

router = APIRouter(prefix="/api", tags=["api"])


NEXT_PAGE = {"X-Next-Before": {"description": "Present when more rows match: pass it as `before` "
                                "for the next page.", "schema": {"type": "integer"}}}


@router.get("/results", summary="List results, newest first", operation_id="listResults",
            response_model=list[ResultOut], responses={200: {"headers": NEXT_PAGE}})
def api_results(response: Response, label: Label = None, status: Status = None,
                min_conf: MinConf = None, max_conf: MaxConf = None, since: Since = None,
                until: Until = None, model: Model = None,
                before: int | None = Query(None, description="Only rows older than this id: the "
                                           "X-Next-Before header of the previous page.", examples=[4211]),
                limit: int = Query(50, ge=1, le=API_PAGE, examples=[100],
                                   description=f"Rows in this page, at most {API_PAGE}."),
                session: Session = Depends(db)) -> list[dict[str, Any]]:
    """One page of results, newest first. Page on with the X-Next-Before header; all of
    them at once: /api/results.csv."""
    f = filters(label, status, min_conf, max_conf, since, until, model, before, limit + 1)
    rows = query_results(session, f)
    if len(rows) > limit:
        rows = rows[:limit]
        response.headers["X-Next-Before"] = str(rows[-1].id)
    return [as_dict(r) for r in rows]


@router.get("/results.csv", response_class=StreamingResponse, summary="Export every matching result as CSV",
            operation_id="exportResultsCsv",
            responses={200: {"content": {"text/csv": {}},
                             "description": "A header line, then one line per row: the columns of "
                             "/api/results, newest first."}})
def api_results_csv(label: Label = None, status: Status = None, min_conf: MinConf = None,
                    max_conf: MaxConf = None, since: Since = None, until: Until = None, model: Model = None,
                    state: WebState = Depends(web_state)):
    """Every matching row as CSV, streamed a page at a time (memory stays flat)."""
    f = filters(label, status, min_conf, max_conf, since, until, model, None, API_PAGE)
    return StreamingResponse(_csv_pages(state.sessions, f), media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="results.csv"'})


def _csv_pages(sessions: sessionmaker, f: ResultFilter) -> Iterator[str]:
    """CSV text, one keyset page at a time, each page in its own short session."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    while True:
        with sessions() as session:
            page = [as_dict(r) for r in query_results(session, f)]
        write_csv_rows(writer, page)  # no cell a spreadsheet would run as a formula
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(page) < f.limit:
            return
        f = replace(f, before_id=page[-1]["id"])


@router.get("/stats", summary="Count results by status and label", operation_id="getStats",
            response_model=Stats)
def api_stats(session: Session = Depends(db)) -> dict[str, Any]:
    """Rows per status and label over the whole table, and the last hour's throughput."""
    return stats(session)


@router.get("/models", summary="List model versions and training runs",
            operation_id="listModels", response_model=ModelsOut)
def api_models(session: Session = Depends(db), state: WebState = Depends(web_state)) -> dict[str, Any]:
    """Every version with its test figures and how often people agreed with it; the current
    version; every training run, trained or skipped."""
    agreement = agreement_by_model(session)
    listing = list_versions(state.registry)
    return {
        "current": listing.current,
        "versions": [{"version": v.name, "metrics": v.test, "architecture": v.architecture,
                      "agreement": agreement.get(v.name)} for v in listing.versions],
        "runs": listing.runs,
    }
