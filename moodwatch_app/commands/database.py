"""`moodwatch db`: the database's schema."""

from __future__ import annotations

import click

from moodwatch_app.state import CliState


@click.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(state: CliState) -> None:
    """Apply schema migrations (the service also does this on start).

    \b
    Example:
        MOODWATCH_DATABASE_URL=postgresql://postgres@localhost/moodwatch moodwatch db upgrade
    """
    from db.migrate import current_revision, upgrade

    url = state.settings.database
    upgrade(url)
    click.echo(f"database at revision {current_revision(url)}")


COMMANDS = (db,)
