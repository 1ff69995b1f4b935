"""The composition root: the `moodwatch` command and the process supervisor of `moodwatch run`.

The only package that imports every service (watcher, worker, trainer, web); the services import
the shared core (moodwatch/) and db/, and the core imports none of them.
"""
