"""FastAPI app with server-rendered pages and a JSON API.

Images are served by result id only, from folders the service owns; every state change is a
POST carrying a CSRF token (double-submit cookie); off loopback a token guards every request.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from db.migrate import open_database
from db.models import Result
from db.repository import (
    RESULT_COLUMNS,
    ResultFilter,
    agreement_by_model,
    as_dict,
    query_results,
    review_queue,
    stats,
)
from moodwatch.curation import label_file
from moodwatch.images import ImageRejected
from moodwatch.redact import mask
from moodwatch.registry import Registry, RegistryError
from moodwatch.settings import LABELS, STATUSES, Settings
from web.thumbs import owned_file, thumbnail

log = logging.getLogger("moodwatch.web")

MAX_ID = 2**63 - 1  # the largest row id a database integer holds
API_PAGE = 1000  # most rows an API page holds: a request never loads the whole table
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
CSRF_COOKIE = "mw_csrf"
TOKEN_COOKIE = "mw_token"
PAGE = 48


def _parse_day(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"bad date {value!r}; use YYYY-MM-DD") from None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _number(value: str | None, kind: type):
    if value is None or value.strip() == "":
        return None
    try:
        return kind(value)
    except ValueError:
        raise HTTPException(422, f"not a number: {value!r}") from None


def endpoints(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The OpenAPI description as rows a template lists."""
    out = []
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            params = [{"name": p["name"], "where": p.get("in", ""), "required": p.get("required", False),
                       "type": _type_of(p.get("schema", {})), "description": p.get("description", "")}
                      for p in op.get("parameters", [])]
            out.append({"method": method.upper(), "path": path, "parameters": params,
                        "description": op.get("description") or op.get("summary", "")})
    return out


def _type_of(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type_of(s) for s in schema["anyOf"] if s.get("type") != "null")
    return schema.get("type", "")


def check_before(before: int | None) -> None:
    if before is not None and not 0 < before <= MAX_ID:
        raise HTTPException(400, f"before must be a row id, 1 to {MAX_ID}")


def _csv_pages(sessions, f: ResultFilter) -> Iterator[str]:
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


def create_app(settings: Settings, token: str | None = None) -> FastAPI:
    sessions = open_database(settings.database)
    registry = Registry(settings.model_dir)
    app = FastAPI(title="moodwatch", description="Results, review and models of moodwatch.",
                  docs_url=None, openapi_url="/api/openapi.json", redoc_url=None)
    status_cache: dict[str, Any] = {"at": 0.0, "value": {}}

    def db() -> Session:
        with sessions() as session:
            yield session

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token:
            supplied = (request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                        or request.cookies.get(TOKEN_COOKIE) or request.query_params.get("token") or "")
            if not hmac.compare_digest(supplied.encode(), token.encode()):
                return Response("a token is required (MOODWATCH_WEB_TOKEN)", status_code=401,
                                media_type="text/plain", headers={"X-Content-Type-Options": "nosniff"})
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'none'")
        if token and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    # CSRF tokens are signed by the server: a value the client chose fails the check. The key is
    # derived from the web token when there is one (stable over restarts), else per process
    # (a restart asks for a reload of the page).
    csrf_key = (hashlib.sha256(b"moodwatch csrf|" + token.encode()).digest() if token
                else secrets.token_bytes(32))

    def sign(nonce: str) -> str:
        return hmac.new(csrf_key, nonce.encode(), hashlib.sha256).hexdigest()[:32]

    def csrf_valid(value: str) -> bool:
        nonce, _, signature = value.partition(".")
        return bool(nonce) and hmac.compare_digest(sign(nonce).encode(), signature.encode())

    def csrf_token(request: Request) -> str:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if csrf_valid(cookie):
            return cookie
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{sign(nonce)}"

    def render(request: Request, name: str, ctx: dict[str, Any]) -> HTMLResponse:
        tok = csrf_token(request)
        response = TEMPLATES.TemplateResponse(request, name, {**ctx, "csrf": tok, "status": status_strip()})
        response.set_cookie(CSRF_COOKIE, tok, httponly=True, samesite="strict")
        return response

    def check_csrf(request: Request, supplied: str) -> None:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not csrf_valid(cookie) or not hmac.compare_digest(cookie.encode(), supplied.encode()):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page")

    def status_strip() -> dict[str, Any]:
        now = time.monotonic()
        if now - status_cache["at"] > 5:
            from moodwatch.status import collect

            try:
                value = collect(settings, ping_timeout=0.5)
            except Exception as exc:  # the strip must not take the page down; it names the error
                log.exception("status strip")
                value = {"error": mask(f"status unavailable: {exc.__class__.__name__}: {exc}")}
            with sessions() as s:
                value["per_minute"] = stats(s)["per_minute_last_hour"]
            status_cache.update(at=now, value=value)
        return status_cache["value"]

    def filters(label: str | None, status: str | None, min_conf: float | None, max_conf: float | None,
                since: str | None, until: str | None, model: str | None, before: int | None,
                limit: int) -> ResultFilter:
        if label and label not in LABELS:
            raise HTTPException(422, f"label must be {' or '.join(LABELS)}")
        if status and status not in STATUSES:
            raise HTTPException(422, f"status must be {', '.join(STATUSES[:-1])} or {STATUSES[-1]}")
        check_before(before)
        return ResultFilter(label=label or None, status=status or None, min_confidence=min_conf,
                            max_confidence=max_conf, since=_parse_day(since), until=_parse_day(until),
                            model=model or None, before_id=before, limit=limit)

    def get_row(session: Session, result_id: int) -> Result:
        row = session.get(Result, result_id) if 0 < result_id <= MAX_ID else None
        if row is None:
            raise HTTPException(404, "no such result")
        return row

    # pages --------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def gallery(request: Request, label: str | None = None, status: str | None = None,
                min_conf: str | None = None, max_conf: str | None = None, since: str | None = None,
                until: str | None = None, model: str | None = None, before: str | None = None,
                session: Session = Depends(db)):
        # An HTML form sends empty fields as "": they mean "no filter", not an error.
        f = filters(label, status, _number(min_conf, float), _number(max_conf, float), since, until, model,
                    _number(before, int), PAGE + 1)
        rows = query_results(session, f)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        args = {k: v for k, v in dict(label=label, status=status, min_conf=min_conf, max_conf=max_conf,
                                      since=since, until=until, model=model).items() if v not in (None, "")}
        # Thumbnails only where the service can show the photo: a file submitted from outside
        # its folders stays there, unserved, and its card says so instead of a broken image.
        shown = {r.id for r in rows if r.status == "classified" and owned_file(settings, r.stored_path)}
        return render(request, "gallery.html", {
            "rows": rows, "args": args, "next_before": rows[-1].id if more and rows else None,
            "models": [v.name for v in registry.versions()], "shown": shown})

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def review(request: Request, session: Session = Depends(db)):
        return render(request, "review.html", {"rows": review_queue(session)})

    @app.post("/review/{result_id}", include_in_schema=False)
    def review_post(request: Request, result_id: int, choice: str = Form(...), csrf: str = Form(...),
                    next: str = Form("/review"), session: Session = Depends(db)):
        check_csrf(request, csrf)
        if choice not in (*LABELS, "skip"):
            raise HTTPException(422, "choice must be happy, sad or skip")
        row = get_row(session, result_id)
        if choice != "skip":
            if row.status != "classified":
                raise HTTPException(409, f"only classified photos can be labelled (this one is {row.status})")
            src = owned_file(settings, row.stored_path)
            if src is None:
                raise HTTPException(409, "the photo is no longer where the service keeps it")
            try:
                label_file(settings, src, choice)
            except ImageRejected as exc:
                raise HTTPException(422, f"the file is not a usable image: {exc.reason}") from None
        row.human_label = choice
        row.reviewed_at = datetime.now(UTC)
        session.commit()
        target = next if next.startswith("/") and not next.startswith("//") else "/review"
        return RedirectResponse(target, status_code=303)

    @app.get("/rejected", response_class=HTMLResponse, include_in_schema=False)
    def rejected(request: Request, before: int | None = None, session: Session = Depends(db)):
        """Every file without a label: rejected (not a usable image) and failed (not readable)."""
        check_before(before)
        rows = sorted((r for status in ("rejected", "failed") for r in query_results(
            session, ResultFilter(status=status, before_id=before, limit=PAGE + 1))),
            key=lambda r: r.id, reverse=True)[: PAGE + 1]
        more = len(rows) > PAGE
        return render(request, "rejected.html", {"rows": rows[:PAGE],
                                                 "next_before": rows[PAGE - 1].id if more else None})

    @app.get("/results/{result_id}", response_class=HTMLResponse, include_in_schema=False)
    def detail(request: Request, result_id: int, session: Session = Depends(db)):
        row = get_row(session, result_id)
        original = session.get(Result, row.duplicate_of) if row.duplicate_of else None
        has_image = owned_file(settings, row.stored_path) is not None
        # A duplicate was never read by the model itself: its original's faces are the ones used.
        faces = row.faces if row.faces is not None or original is None else original.faces
        return render(request, "detail.html", {"row": row, "original": original, "has_image": has_image,
                                               "faces": faces})

    @app.get("/models", response_class=HTMLResponse, include_in_schema=False)
    def models_page(request: Request, session: Session = Depends(db)):
        return render(request, "models.html", {
            "versions": list(reversed(registry.versions())), "current": registry.current_name(),
            "runs": list(reversed(registry.runs()))[:50], "agreement": agreement_by_model(session)})

    @app.get("/api/docs", response_class=HTMLResponse, include_in_schema=False)
    def api_docs(request: Request):
        # Rendered here from the OpenAPI description: Swagger UI would load scripts from a CDN,
        # which the pages' own Content-Security-Policy (rightly) blocks.
        return render(request, "api_docs.html", {"endpoints": endpoints(app.openapi())})

    # files, by id only ------------------------------------------------------------------------
    @app.get("/thumb/{result_id}", include_in_schema=False)
    def thumb(result_id: int, session: Session = Depends(db)):
        row = get_row(session, result_id)
        path = thumbnail(settings, row.id, row.stored_path)
        if path is None:
            raise HTTPException(404, "no thumbnail for this result")
        return FileResponse(path, media_type="image/jpeg")

    @app.get("/image/{result_id}", include_in_schema=False)
    def image(result_id: int, session: Session = Depends(db)):
        row = get_row(session, result_id)
        path = owned_file(settings, row.stored_path)
        if path is None or row.status != "classified":
            raise HTTPException(404, "no image for this result")
        with open(path, "rb") as fh:  # the signature only, not a whole photo per request
            head = fh.read(2)
        kind = {b"\xff\xd8": "image/jpeg", b"\x89P": "image/png", b"BM": "image/bmp"}.get(
            head, "application/octet-stream")
        return FileResponse(path, media_type=kind)

    @app.get("/plots/{version}/{name}", include_in_schema=False)
    def plot(version: str, name: str):
        if name not in ("loss.png", "accuracy.png"):
            raise HTTPException(404, "no such plot")
        try:
            v = registry.get(version)
        except RegistryError:
            raise HTTPException(404, "no such model version") from None
        path = v.path / name
        if not path.is_file():
            raise HTTPException(404, "no such plot")
        return FileResponse(path, media_type="image/png")

    # API --------------------------------------------------------------------------------------
    @app.get("/api/results", tags=["api"])
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

    @app.get("/api/results.csv", tags=["api"], response_class=StreamingResponse)
    def api_results_csv(label: str | None = None, status: str | None = None,
                        min_conf: float | None = None, max_conf: float | None = None,
                        since: str | None = None, until: str | None = None, model: str | None = None):
        """Every matching row as CSV, streamed a page at a time (memory stays flat)."""
        f = filters(label, status, min_conf, max_conf, since, until, model, None, API_PAGE)
        return StreamingResponse(_csv_pages(sessions, f), media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="results.csv"'})

    @app.get("/api/stats", tags=["api"])
    def api_stats(session: Session = Depends(db)) -> dict[str, Any]:
        return stats(session)

    @app.get("/api/models", tags=["api"])
    def api_models(session: Session = Depends(db)) -> dict[str, Any]:
        agreement = agreement_by_model(session)
        return {
            "current": registry.current_name(),
            "versions": [{"version": v.name, "metrics": v.metrics().get("test"),
                          "architecture": v.architecture,
                          "agreement": agreement.get(v.name)} for v in registry.versions()],
            "runs": registry.runs(),
        }

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")

    return app
