"""Thumbnails, made once per result and cached under DATA_DIR/.thumbs."""

from __future__ import annotations

from pathlib import Path

import cv2

from moodwatch.files import write_atomic
from moodwatch.images import ImageRejected, decode_rgb
from moodwatch.settings import Settings

THUMB = 192


def owned_file(settings: Settings, stored_path: str | None) -> Path | None:
    """The result's file, only if it lies in a folder the service owns and is no link."""
    if not stored_path:
        return None
    p = Path(stored_path)
    if p.is_symlink() or not p.is_file():
        return None
    real = p.resolve()
    roots = [settings.data_dir.resolve(), settings.inbox_dir.resolve()]
    if not any(real.is_relative_to(r) for r in roots):
        return None
    return real


def thumbnail(settings: Settings, result_id: int, stored_path: str | None) -> Path | None:
    cache = settings.data_dir / ".thumbs" / f"{result_id}.jpg"
    if cache.is_file():
        return cache
    src = owned_file(settings, stored_path)
    if src is None:
        return None
    try:
        rgb = decode_rgb(src.read_bytes(), settings.max_pixels)
    except (ImageRejected, OSError):
        return None
    h, w = rgb.shape[:2]
    scale = THUMB / max(h, w)
    small = cv2.resize(rgb, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        return None
    write_atomic(cache, buf.tobytes())
    return cache
