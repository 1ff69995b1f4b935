"""What every route of the review page shares, as FastAPI dependencies: the settings, database
sessions, model registry, CSRF signing and the cached status strip (one WebState per app)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from db.errors import describe
from db.models import Result
from db.repository import ResultFilter, stats
from moodwatch.registry import Registry
from moodwatch.settings import Settings
from moodwatch.vocab import LABELS, STATUSES

log = logging.getLogger("moodwatch.web")

MAX_ID = 2**63 - 1  # the largest row id a database integer holds
API_PAGE = 1000  # most rows an API page holds: a request never loads the whole table
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
CSRF_COOKIE = "mw_csrf"
TOKEN_COOKIE = "mw_token"
PAGE = 48
STATUS_SECONDS = 5.0  # the status strip is collected at most this often (it pings the workers)
WORKER_LABELS = {"ready": "ready", "loading": "loading the model", "unavailable": "cannot serve",
                 "none": "none"}  # moodwatch.heartbeat.overall's states


@dataclass
class WebState:
    settings: Settings
    sessions: sessionmaker
    registry: Registry
    token: str | None
    # CSRF tokens are signed by the server: a value the client chose fails the check. The key is
    # derived from the web token when there is one (stable over restarts), else per process
    # (a restart asks for a reload of the page).
    csrf_key: bytes = b""
    status_at: float = 0.0
    status_value: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.csrf_key:
            self.csrf_key = (hashlib.sha256(b"moodwatch csrf|" + self.token.encode()).digest()
                             if self.token else secrets.token_bytes(32))

    def sign(self, nonce: str) -> str:
        return hmac.new(self.csrf_key, nonce.encode(), hashlib.sha256).hexdigest()[:32]

    def csrf_valid(self, value: str) -> bool:
        nonce, _, signature = value.partition(".")
        return bool(nonce) and hmac.compare_digest(self.sign(nonce).encode(), signature.encode())

    def csrf_token(self, request: Request) -> str:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if self.csrf_valid(cookie):
            return cookie
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self.sign(nonce)}"

    def status_strip(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self.status_at > STATUS_SECONDS:
            from moodwatch.status import collect

            try:
                value = collect(self.settings, ping_timeout=0.5)
            except Exception as exc:  # the strip must not take the page down; it names the error
                log.exception("status strip")
                value = {"error": f"status unavailable: {describe(exc)}"}  # no SQL, no password
            # The strip says in a word whether a worker has its model loaded; the whole line
            # (host, pid, last heartbeat) is the word's title.
            value["worker_label"] = WORKER_LABELS.get(value.get("worker_state", ""), "?")
            with self.sessions() as s:
                value["per_minute"] = stats(s)["per_minute_last_hour"]
            self.status_at, self.status_value = now, value
        return self.status_value


def web_state(request: Request) -> WebState:
    return request.app.state.web


def db(state: WebState = Depends(web_state)) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


def render(request: Request, name: str, ctx: dict[str, Any]) -> HTMLResponse:
    state = web_state(request)
    tok = state.csrf_token(request)
    response = TEMPLATES.TemplateResponse(request, name, {**ctx, "csrf": tok, "status": state.status_strip()})
    response.set_cookie(CSRF_COOKIE, tok, httponly=True, samesite="strict")
    return response


def check_csrf(request: Request, supplied: str) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    valid = web_state(request).csrf_valid(cookie)
    if not valid or not hmac.compare_digest(cookie.encode(), supplied.encode()):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")


def parse_day(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"bad date {value!r}; use YYYY-MM-DD") from None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def number(value: str | None, kind: type):
    if value is None or value.strip() == "":
        return None
    try:
        return kind(value)
    except ValueError:
        raise HTTPException(422, f"not a number: {value!r}") from None


def check_before(before: int | None) -> None:
    if before is not None and not 0 < before <= MAX_ID:
        raise HTTPException(400, f"before must be a row id, 1 to {MAX_ID}")


def filters(label: str | None, status: str | None, min_conf: float | None, max_conf: float | None,
            since: str | None, until: str | None, model: str | None, before: int | None,
            limit: int) -> ResultFilter:
    if label and label not in LABELS:
        raise HTTPException(422, f"label must be {' or '.join(LABELS)}")
    if status and status not in STATUSES:
        raise HTTPException(422, f"status must be {', '.join(STATUSES[:-1])} or {STATUSES[-1]}")
    check_before(before)
    return ResultFilter(label=label or None, status=status or None, min_confidence=min_conf,
                        max_confidence=max_conf, since=parse_day(since), until=parse_day(until),
                        model=model or None, before_id=before, limit=limit)


def get_row(session: Session, result_id: int) -> Result:
    row = session.get(Result, result_id) if 0 < result_id <= MAX_ID else None
    if row is None:
        raise HTTPException(404, "no such result")
    return row
