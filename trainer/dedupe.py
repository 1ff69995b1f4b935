"""Near-duplicate photos (resized, recompressed, lightly cropped copies) by perceptual hash.

Photo sets gathered from tutorial repositories copy each other: the same photo at another size
or quality has other bytes, so grouping by sha256 alone lets a copy sit in the training folds
while its twin is tested. A 64-bit DCT hash (pHash) of the grey 32x32 thumbnail is the same or
a few bits apart for such copies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from moodwatch.images import decode_rgb
from moodwatch.vocab import DEFAULT_MAX_PIXELS
from trainer.dataset import Item

MAX_DISTANCE = 6  # bits of 64: copies land at 0-4, different photos at 20 and more


def perceptual_hash(rgb: np.ndarray) -> int:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return int("".join("1" if b else "0" for b in bits), 2)


def hash_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    return perceptual_hash(decode_rgb(Path(path).read_bytes(), max_pixels))


def near_duplicate_groups(hashes: dict[str, int], max_distance: int = MAX_DISTANCE) -> dict[str, str]:
    """Each key's group: the smallest key among the keys within max_distance of it, transitively."""
    keys = sorted(hashes)
    parent = {k: k for k in keys}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    values = np.array([hashes[k] for k in keys], dtype=np.uint64)
    for i, k in enumerate(keys):
        distance = np.array([bin(int(v)).count("1") for v in values[i + 1 :] ^ values[i]], dtype=int)
        for j in np.flatnonzero(distance <= max_distance):
            a, b = root(k), root(keys[i + 1 + j])
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {k: root(k) for k in keys}


def near_duplicate_key(items: list[Item], max_pixels: int = DEFAULT_MAX_PIXELS) -> Callable[[Item], str]:
    """A grouping key for splits and folds: near-twins (and identical files) share it."""
    groups = near_duplicate_groups({it.sha256: hash_file(it.path, max_pixels) for it in items})
    return lambda it: groups[it.sha256]
