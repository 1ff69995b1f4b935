"""Database errors as one short log line.

SQLAlchemy's text of an error repeats the whole statement and its parameters (file paths,
hashes, by the hundred), and a driver's own text can quote the statement on later lines
(PostgreSQL's "LINE 1: ..."): a log line says the error class and the driver's first line only,
and never a password of a URL.
"""

from __future__ import annotations

from moodwatch.redact import mask

MAX_MESSAGE = 300  # characters of the driver's message kept


def describe(exc: BaseException) -> str:
    """E.g. "OperationalError: database is locked": the driver's error when SQLAlchemy wrapped
    one, its class and the first line of its message; no SQL, no parameters, no password."""
    from sqlalchemy.exc import StatementError

    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    # A StatementError with no driver error under it: its own message, without the statement.
    text = str(cause.args[0] if cause.args else "") if isinstance(cause, StatementError) else str(cause)
    first = (text.strip().splitlines() or [""])[0]
    return mask(f"{cause.__class__.__name__}: {first[:MAX_MESSAGE]}")
