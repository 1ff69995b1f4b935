"""One engine factory for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker


def normalise_url(url: str) -> str:
    """Plain postgresql:// URLs use psycopg 3, the driver we ship."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


class NoDatabaseError(LookupError):
    """A command that only reads found no database: it must not create an empty one."""


def sqlite_file(url: str) -> Path | None:
    """The file of a file-backed SQLite URL; None for any other database."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return Path(u.database)
    return None


def require_existing(url: str) -> None:
    """For read-only commands (results, stats, status): opening a missing SQLite file would
    create it, and an empty database would answer "no rows" for a service that is elsewhere."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise NoDatabaseError(
            f"no database at {path}: nothing has run with this data folder yet (`moodwatch run` "
            "creates it); check MOODWATCH_DATA_DIR or MOODWATCH_DATABASE_URL"
        )


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # WAL lets the CLI read while a worker writes; the busy timeout waits out writers.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # pre_ping drops connections a database restart broke, instead of failing the next job.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         connect_args={"connect_timeout": 5})


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def database_problem(url: str) -> str | None:
    """Why the database cannot be read, or None (what `moodwatch status` checks). A missing
    SQLite file is reported, never created."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        require_existing(url)
    except NoDatabaseError as exc:
        return str(exc)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"database unreachable (MOODWATCH_DATABASE_URL): {getattr(exc, 'orig', None) or exc}"
    finally:
        engine.dispose()
    return None
