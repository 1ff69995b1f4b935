"""Alembic migrations, applied programmatically so the service upgrades itself on start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.orm import sessionmaker

from db.engine import normalise_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would mangle a literal % in a password.
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def open_database(url: str) -> sessionmaker:
    """Bring the schema up to date, then hand out sessions: what every entry point needs."""
    from db.engine import make_engine, make_sessionmaker

    upgrade(url)
    return make_sessionmaker(make_engine(url))


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from db.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
