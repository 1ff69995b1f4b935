"""The ignore patterns live in the shared core (the worker re-applies them); kept here for callers."""

from moodwatch.filters import IGNORE_PATTERNS, is_ignored

__all__ = ["IGNORE_PATTERNS", "is_ignored"]
