"""FastAPI app with server-rendered pages and a JSON API.

Images are served by result id only, from folders the service owns; every state change is a
POST carrying a CSRF token (double-submit cookie); off loopback a token guards every request.
A request whose Host header names anything but the bound address (or localhost, or a name in
MOODWATCH_WEB_ALLOWED_HOSTS) is refused: a web page whose name was re-pointed at this machine
(DNS rebinding) must not read results or photos.
The routes live in pages.py, media.py and api.py; what they share, in state.py.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from db.migrate import open_database
from moodwatch.metrics import web_registry
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


WILDCARD_BINDS = ("0.0.0.0", "::", "")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
HOST_HEADER = re.compile(r"[A-Za-z0-9._\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def create_app(settings: Settings, token: str | None = None, host: str | None = None) -> FastAPI:
    """The review page. host: the address it is served on (`moodwatch web --host`); requests
    naming another host are refused. None checks no Host header: an app a test client serves."""
    app = FastAPI(title="moodwatch", description="Results, review and models of moodwatch.",
                  docs_url=None, openapi_url="/api/openapi.json", redoc_url=None)
    app.state.web = WebState(settings, open_database(settings.database),
                             Registry.for_settings(settings), token)
    hosts = None if host is None else HostCheck.for_bind(host, settings.web_allowed_hosts)
    app.middleware("http")(_guard(token, hosts))
    for module in (pages, media, api):
        app.include_router(module.router)
    # Prometheus scrapes it like any client: behind the Host check and the token (a scrape
    # config's `authorization` or `params: {token: [...]}`), README "Monitoring".
    web = app.state.web
    app.state.metrics = web_registry(settings, web.sessions, web.registry.current_name)
    app.add_api_route("/metrics", _metrics, methods=["GET"], include_in_schema=False)
    app.exception_handler(HTTPException)(_http_error)
    return app


class HostCheck:
    """Which Host headers a request may carry, port or none: the bound address; localhost and
    the loopback addresses when bound to loopback; any IP address and localhost when bound to
    every address (rebinding needs a name, so an address is safe); the configured names."""

    def __init__(self, names: set[str], any_address: bool = False):
        self.names = names
        self.any_address = any_address

    @classmethod
    def for_bind(cls, bind: str, configured: str) -> HostCheck:
        bind = bind.strip().strip("[]").lower()
        names = {n.strip().strip("[]").lower() for n in configured.split(",") if n.strip()} | {bind}
        if bind in LOOPBACK_NAMES or _is_loopback(bind):
            names |= set(LOOPBACK_NAMES)
        wildcard = bind in WILDCARD_BINDS
        if wildcard:
            names |= set(LOOPBACK_NAMES)
        return cls(names, any_address=wildcard)

    def allows(self, header: str | None) -> bool:
        if not header or not HOST_HEADER.fullmatch(header):
            return False
        try:
            name = (urlsplit(f"//{header}").hostname or "").lower()
        except ValueError:
            return False
        return name in self.names or (self.any_address and _is_address(name))


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    return _is_address(name) and ipaddress.ip_address(name).is_loopback


def _guard(token: str | None, hosts: HostCheck | None = None):
    """Requests naming another host are refused; off loopback a token is required on every
    request; every response gets the security headers."""
    async def guard(request: Request, call_next):
        if hosts is not None and not hosts.allows(request.headers.get("host")):
            return Response("refused: the Host header names neither this server's address nor a name in "
                            "MOODWATCH_WEB_ALLOWED_HOSTS", status_code=400, media_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff"})
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


def _metrics(request: Request) -> Response:
    """Prometheus's text format. A plain def: FastAPI runs it in a thread, as the database and
    broker reads must not hold the event loop."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


async def _http_error(request: Request, exc: HTTPException):
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")
