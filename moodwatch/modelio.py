"""Loading registry models. Keras is imported on first use, so importing this costs nothing."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any


class ModelLoadError(RuntimeError):
    pass


def load_model(path: Path) -> Any:
    """Load a ``.keras`` file; safe_mode refuses any serialized Python code (lambdas, pickles)."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    if not zipfile.is_zipfile(path):  # Keras says "File not found" of a file cut short
        raise ModelLoadError(f"cannot load model {path}: not a valid Keras archive (truncated or corrupt)")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {path}: {exc.__class__.__name__}: {exc}") from exc


SAD_THRESHOLD = 0.5  # a score P(sad) at or above it is sad: serving, evaluation and reports alike


def is_sad(score: Any) -> Any:
    """True where a score (or an array of them) means sad; the one place the threshold is applied."""
    return score >= SAD_THRESHOLD


def label_for(score: float) -> tuple[str, float]:
    """The label and its probability for a sigmoid score P(sad)."""
    return ("sad", score) if is_sad(score) else ("happy", 1.0 - score)
