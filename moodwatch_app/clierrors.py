"""How the CLI reports a failure: one line on stderr starting with ``error:``, exit code 1.

A user never sees a traceback; ``moodwatch -v ...`` logs it too, for a bug report.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

log = logging.getLogger("moodwatch.cli")
EXIT_ERROR = 1
_MAX_CHARS = 800


def one_line(text: str) -> str:
    """Collapse whitespace and newlines, and cut very long messages."""
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 3] + "..."


def fail(message: str) -> NoReturn:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(EXIT_ERROR)


def require_folder(path: Path, variable: str) -> None:
    """A folder setting that names a file is refused before anything starts."""
    if path.exists() and not path.is_dir():
        fail(f"{path} is not a folder (set by {variable}, or its default)")


def _settings_error(exc: Any) -> str:
    """pydantic's report on MOODWATCH_* variables, one clause a variable, with the range a
    numeric one allows. A check of several settings together (the inbox's place) has no single
    variable: its message names them."""
    from moodwatch.redact import mask
    from moodwatch.settings import allowed_range

    parts = []
    for err in exc.errors():
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        loc = [str(p) for p in err.get("loc", ())]
        if not loc:
            parts.append(message)
            continue
        field = "_".join(loc)
        bounds = allowed_range(field)
        allowed = f" (allowed: {bounds})" if bounds else ""
        # The input is shown masked: a database or broker URL may carry a password.
        shown = mask(repr(err.get("input")))
        parts.append(f"MOODWATCH_{field.upper()}={shown}: {message}{allowed}")
    return "bad setting: " + "; ".join(parts)


def describe(exc: BaseException) -> tuple[str, bool]:
    """The message for an exception, and whether it was expected (bad input or environment)."""
    from pydantic import ValidationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from moodwatch.images import ImageRejected

    if isinstance(exc, ValidationError):
        return _settings_error(exc), True
    if isinstance(exc, ArgumentError):
        return f"bad database URL (MOODWATCH_DATABASE_URL): {exc}", True
    if isinstance(exc, DBAPIError):
        # The driver's own words; the statement and the SQLAlchemy link are noise here.
        return f"database error: {exc.orig}", True
    if isinstance(exc, RedisConnectionError | ConnectionError):
        return f"broker unreachable (MOODWATCH_BROKER_URL): {exc}", True
    if isinstance(exc, ImageRejected):
        return exc.reason, True
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}", True
    if isinstance(exc, ValueError | RuntimeError | OSError | LookupError):
        return str(exc) or exc.__class__.__name__, True
    return f"{exc.__class__.__name__}: {exc}", False


class Cli(click.Group):
    """A click group whose every failure (usage or otherwise) is one line and exit code 1."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            fail(exc.format_message() + hint)
        except click.ClickException as exc:
            fail(exc.format_message())
        except (click.Abort, KeyboardInterrupt, EOFError):
            fail("aborted")
        except Exception as exc:
            message, expected = describe(exc)
            log.debug("the traceback of the error below", exc_info=True)
            if not expected:
                message += " (an unexpected error: `moodwatch -v ...` logs the traceback)"
            fail(message)
        sys.exit(rv if isinstance(rv, int) else 0)
