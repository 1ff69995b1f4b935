"""The domain's words and sizes, named once: labels, result statuses, scoring regimes, the
model's input size and the default pixel limit. It imports nothing of the project, so every
module (settings included) can use it.

Statuses and regimes are `StrEnum`s (like rq's `JobStatus`): a member equals its string, so
the database columns, the JSON and the templates keep the plain words while the code names
them once. The accepted image formats are one table in moodwatch.images.
"""

from __future__ import annotations

from enum import StrEnum

LABELS = ("happy", "sad")  # the classes; a label's index is its training target
IMAGE_SIZE = 256  # the whole-image CNN's input side, in pixels
DEFAULT_MAX_PIXELS = 50_000_000  # the one default: settings, images and the trainer's helpers


class Status(StrEnum):
    """How a results row ended; every row ends in exactly one."""

    CLASSIFIED = "classified"
    REJECTED = "rejected"  # not an image we accept (type, size, content)
    FAILED = "failed"  # could not be read or classified


# Plain strings (not members), in the order shown to users: click's Choice lists an Enum's
# member names, not its values, and `--status classified` must stay what users type.
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)


class Regime(StrEnum):
    """Which rule scored a photo (see moodwatch.pipeline.combine_logits)."""

    FACES = "faces"  # a mix of the face and whole-image logits
    WHOLE = "whole"  # no face found: the whole-image CNN alone
    CLOSE_UP = "close-up"  # one face filling the photo: the face model alone
