"""FastAPI app with server-rendered pages and a JSON API.

Images are served by result id only, from folders the service owns; every state change is a
POST carrying a CSRF token (double-submit cookie); off loopback a token guards every request.
The routes live in pages.py, media.py and api.py; what they share, in state.py.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from db.migrate import open_database
from moodwatch.registry import Registry
from moodwatch.settings import Settings
from web import api, media, pages
from web.state import TOKEN_COOKIE, WebState

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'none'"),
}


def create_app(settings: Settings, token: str | None = None) -> FastAPI:
    app = FastAPI(title="moodwatch", description="Results, review and models of moodwatch.",
                  docs_url=None, openapi_url="/api/openapi.json", redoc_url=None)
    app.state.web = WebState(settings, open_database(settings.database), Registry(settings.model_dir), token)
    app.middleware("http")(_guard(token))
    for module in (pages, media, api):
        app.include_router(module.router)
    app.exception_handler(HTTPException)(_http_error)
    return app


def _guard(token: str | None):
    """Off loopback a token is required on every request; every response gets the security headers."""
    async def guard(request: Request, call_next):
        if token:
            supplied = (request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                        or request.cookies.get(TOKEN_COOKIE) or request.query_params.get("token") or "")
            if not hmac.compare_digest(supplied.encode(), token.encode()):
                return Response("a token is required (MOODWATCH_WEB_TOKEN)", status_code=401,
                                media_type="text/plain", headers={"X-Content-Type-Options": "nosniff"})
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if token and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    return guard


async def _http_error(request: Request, exc: HTTPException):
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")
