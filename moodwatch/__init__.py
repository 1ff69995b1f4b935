"""moodwatch: classify photos of people as happy or sad, and keep the model improving.

This package is the shared core the services (watcher, worker, trainer, web) build on: settings,
image checks and decoding, the model pipeline and registry, the queue's configuration, files.
It imports no service package, nor moodwatch_app (the CLI and the supervisor, which import
every service).
"""

__version__ = "0.1.0"
