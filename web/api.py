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

from db.repository import RESULT_COLUMNS, ResultFilter, agreement_by_model, as_dict, query_results, stats
from web.state import API_PAGE, WebState, db, filters, web_state

router = APIRouter(prefix="/api", tags=["api"])


@router.get("/results")
def api_results(response: Response, label: str | None = None, status: str | None = None,
                min_conf: float | None = None, max_conf: float | None = None,
                since: str | None = Query(None, description="ISO date or time"),
                until: str | None = None, model: str | None = None,
                before: int | None = Query(None, description="rows older than this id: the "
                                           "X-Next-Before header of the previous page"),
                limit: int = Query(50, ge=1, le=API_PAGE, description=f"rows, at most {API_PAGE}"),
                session: Session = Depends(db)) -> list[dict[str, Any]]:
    """One page of results, newest first. Page on with the X-Next-Before header; all of
    them at once: /api/results.csv."""
    f = filters(label, status, min_conf, max_conf, since, until, model, before, limit + 1)
    rows = query_results(session, f)
    if len(rows) > limit:
        rows = rows[:limit]
        response.headers["X-Next-Before"] = str(rows[-1].id)
    return [as_dict(r) for r in rows]


@router.get("/results.csv", response_class=StreamingResponse)
def api_results_csv(label: str | None = None, status: str | None = None,
                    min_conf: float | None = None, max_conf: float | None = None,
                    since: str | None = None, until: str | None = None, model: str | None = None,
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
        writer.writerows(page)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(page) < f.limit:
            return
        f = replace(f, before_id=page[-1]["id"])


@router.get("/stats")
def api_stats(session: Session = Depends(db)) -> dict[str, Any]:
    return stats(session)


@router.get("/models")
def api_models(session: Session = Depends(db), state: WebState = Depends(web_state)) -> dict[str, Any]:
    agreement = agreement_by_model(session)
    registry = state.registry
    return {
        "current": registry.current_name(),
        "versions": [{"version": v.name, "metrics": v.metrics().get("test"),
                      "architecture": v.architecture,
                      "agreement": agreement.get(v.name)} for v in registry.versions()],
        "runs": registry.runs(),
    }
