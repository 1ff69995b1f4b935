"""The ``moodwatch`` command: parses options, calls the library, formats the answer.

`main` sets up logging and hands every subcommand a CliState (click's ``ctx.obj``), which reads
the settings once; the subcommands live in moodwatch_app/commands/, one module per family, and
print through moodwatch_app/output.py. Services are imported inside each command, so
``moodwatch watch`` never loads TensorFlow and ``moodwatch --help`` is instant.
"""

from __future__ import annotations

import logging
import os

import click

from moodwatch_app.clierrors import Cli
from moodwatch_app.commands import database, files, models, queries, services, training
from moodwatch_app.state import CliState


@click.group(cls=Cli)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """moodwatch: classify photos of people as happy or sad.

    \b
    Example:
        moodwatch run              # watcher + worker + nightly retraining + review page
        moodwatch classify a.jpg   # try the current model on a file
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from moodwatch.redact import install

    install()  # no password of a database or broker URL in any log line
    # TensorFlow's C++ start-up chatter is noise on a CLI.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ctx.obj = CliState()


for family in (training, models, queries, services, files, database):
    for command in family.COMMANDS:
        main.add_command(command)


if __name__ == "__main__":
    main()
