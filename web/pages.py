"""The server-rendered pages: gallery, review queue, rejected and failed files, one result,
stats, models, and the API's description; the charts they show.

Times on the pages are the server's local time with its zone named (the API's are UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from db.models import Result
from db.repository import ResultFilter, agreement_by_model, query_results, review_queue, stats
from moodwatch.curation import label_file
from moodwatch.images import ImageRejected
from moodwatch.registry import RegistryError
from moodwatch.vocab import LABELS, Status
from web import charts
from web.schemas import as_utc
from web.state import (
    PAGE,
    TEMPLATES,
    WebState,
    check_before,
    check_csrf,
    db,
    filters,
    get_row,
    number,
    render,
    web_state,
)
from web.thumbs import owned_file

router = APIRouter(include_in_schema=False)
SVG = "image/svg+xml"


def local_time(value: datetime | str | None) -> str:
    """A stored time (UTC) as the server's local time with its zone: 2026-11-29 15:03:12 CET."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(value, datetime):  # none, or a field a run did not record
        return str(value or "")
    local = as_utc(value).astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.strftime("%Z") or local.strftime("%z"))


TEMPLATES.env.filters["localtime"] = local_time


@router.get("/", response_class=HTMLResponse, summary="Results gallery with filters")
def gallery(request: Request, label: str | None = None, status: str | None = None,
            min_conf: str | None = None, max_conf: str | None = None, since: str | None = None,
            until: str | None = None, model: str | None = None, before: str | None = None,
            session: Session = Depends(db), state: WebState = Depends(web_state)):
    # An HTML form sends empty fields as "": they mean "no filter", not an error.
    f = filters(label, status, number(min_conf, float), number(max_conf, float), since, until, model,
                number(before, int), PAGE + 1)
    rows = query_results(session, f)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    args = {k: v for k, v in dict(label=label, status=status, min_conf=min_conf, max_conf=max_conf,
                                  since=since, until=until, model=model).items() if v not in (None, "")}
    # Thumbnails only where the service can show the photo: a file submitted from outside
    # its folders stays there, unserved, and its card says so instead of a broken image.
    shown = {r.id for r in rows
             if r.status == Status.CLASSIFIED and owned_file(state.settings, r.stored_path)}
    return render(request, "gallery.html", {
        "rows": rows, "args": args, "next_before": rows[-1].id if more and rows else None,
        "models": [v.name for v in state.registry.versions()], "shown": shown})


@router.get("/review", response_class=HTMLResponse, summary="Review queue: least confident first")
def review(request: Request, session: Session = Depends(db)):
    return render(request, "review.html", {"rows": review_queue(session)})


@router.post("/review/{result_id}", summary="Record a person's label for a result")
def review_post(request: Request, result_id: int, choice: str = Form(...), csrf: str = Form(...),
                next: str = Form("/review"), session: Session = Depends(db),
                state: WebState = Depends(web_state)):
    check_csrf(request, csrf)
    if choice not in (*LABELS, "skip"):
        raise HTTPException(422, "choice must be happy, sad or skip")
    row = get_row(session, result_id)
    if choice != "skip":
        _label(state, row, choice)
    row.human_label = choice
    row.reviewed_at = datetime.now(UTC)
    session.commit()
    target = next if next.startswith("/") and not next.startswith("//") else "/review"
    return RedirectResponse(target, status_code=303)


def _label(state: WebState, row: Result, choice: str) -> None:
    """Copy the reviewed photo into the curated folder of its label, for the nightly retrain."""
    if row.status != Status.CLASSIFIED:
        raise HTTPException(409, f"only classified photos can be labelled (this one is {row.status})")
    src = owned_file(state.settings, row.stored_path)
    if src is None:
        raise HTTPException(409, "the photo is no longer where the service keeps it")
    try:
        label_file(state.settings, src, choice)
    except ImageRejected as exc:
        raise HTTPException(422, f"the file is not a usable image: {exc.reason}") from None


@router.get("/rejected", response_class=HTMLResponse, summary="Rejected and failed files")
def rejected(request: Request, before: int | None = None, session: Session = Depends(db)):
    """Every file without a label: rejected (not a usable image) and failed (not readable)."""
    check_before(before)
    rows = sorted((r for status in (Status.REJECTED, Status.FAILED) for r in query_results(
        session, ResultFilter(status=status, before_id=before, limit=PAGE + 1))),
        key=lambda r: r.id, reverse=True)[: PAGE + 1]
    more = len(rows) > PAGE
    return render(request, "rejected.html", {"rows": rows[:PAGE],
                                             "next_before": rows[PAGE - 1].id if more else None})


@router.get("/results/{result_id}", response_class=HTMLResponse, summary="One result")
def detail(request: Request, result_id: int, session: Session = Depends(db),
           state: WebState = Depends(web_state)):
    row = get_row(session, result_id)
    original = session.get(Result, row.duplicate_of) if row.duplicate_of else None
    has_image = owned_file(state.settings, row.stored_path) is not None
    # A duplicate was never read by the model itself: its original's faces are the ones used.
    faces = row.faces if row.faces is not None or original is None else original.faces
    return render(request, "detail.html", {"row": row, "original": original, "has_image": has_image,
                                           "faces": faces})


@router.get("/models", response_class=HTMLResponse, summary="Model versions, calibration, training runs")
def models_page(request: Request, session: Session = Depends(db), state: WebState = Depends(web_state)):
    registry = state.registry
    return render(request, "models.html", {
        "versions": list(reversed(registry.versions())), "current": registry.current_name(),
        "runs": list(reversed(registry.runs()))[:50], "agreement": agreement_by_model(session)})


@router.get("/stats", response_class=HTMLResponse, summary="Counts and charts of the results")
def stats_page(request: Request, session: Session = Depends(db)):
    return render(request, "stats.html", {"stats": stats(session), "chart": _stats_svg(session)})


@router.get("/charts/stats.svg", summary="Per-hour and confidence charts as SVG")
def stats_chart(session: Session = Depends(db)):
    return Response(_stats_svg(session), media_type=SVG)


def _stats_svg(session: Session) -> str:
    figure = charts.stats_figure(charts.hourly_counts(session), charts.confidence_histogram(session))
    return charts.svg(figure)


@router.get("/charts/calibration/{version}.svg", summary="A version's reliability diagram as SVG")
def calibration_chart(version: str, session: Session = Depends(db), state: WebState = Depends(web_state)):
    try:
        v = state.registry.get(version)
    except RegistryError:
        raise HTTPException(404, "no such model version") from None
    figure = charts.calibration_figure(charts.calibration_for(session, v.name, v.metrics()))
    return Response(charts.svg(figure), media_type=SVG)


@router.get("/api/docs", response_class=HTMLResponse, summary="The JSON API's description")
def api_docs(request: Request):
    # Rendered here from the OpenAPI description: Swagger UI would load scripts from a CDN,
    # which the pages' own Content-Security-Policy (rightly) blocks.
    return render(request, "api_docs.html", {"endpoints": endpoints(request.app.openapi())})


def endpoints(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The OpenAPI description as rows a template lists."""
    out = []
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            params = [{"name": p["name"], "where": p.get("in", ""), "required": p.get("required", False),
                       "type": _type_of(p.get("schema", {})), "description": p.get("description", ""),
                       "example": _example(p)}
                      for p in op.get("parameters", [])]
            out.append({"method": method.upper(), "path": path, "parameters": params,
                        "summary": op.get("summary", ""), "description": op.get("description", "")})
    return out


def _example(param: dict[str, Any]) -> str:
    examples = param.get("schema", {}).get("examples") or [param.get("example", "")]
    return str(examples[0])


def _type_of(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type_of(s) for s in schema["anyOf"] if s.get("type") != "null")
    return schema.get("type", "")
