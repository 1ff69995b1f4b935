"""The `moodwatch` subcommands, one module per family; moodwatch_app.cli adds them to `main`.

Each command parses, calls the library and prints through moodwatch_app.output; services are
imported inside the command, so ``moodwatch watch`` never loads TensorFlow and ``--help`` is
instant.
"""
