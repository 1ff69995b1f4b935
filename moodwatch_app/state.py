"""What `main` hands every command through click's context object (``@click.pass_obj``)."""

from __future__ import annotations

from moodwatch.settings import Settings, get_settings


class CliState:
    """The settings of the service a command talks to, read once for the whole command.

    Made in `main`, read when a command first asks, not in `main` itself: ``--help`` of any
    command and a bad option must answer where no settings can be read (no service yet, a bad
    variable), and `moodwatch run` reads them its own way (service_settings). A bad setting
    raises pydantic's error here, which `Cli` turns into one ``error:`` line.
    """

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = get_settings()  # variables, then `moodwatch run`'s record
        return self._settings

    def service_settings(self) -> Settings:
        """`moodwatch run`'s own: it is the service, so it makes a home where it finds none and
        is never warned that the record it replaces is stale (moodwatch.home.load_settings)."""
        from moodwatch.home import load_settings

        self._settings = load_settings(starting_service=True)
        return self._settings
