"""Near-duplicate photos (resized, recompressed, cropped or mirrored copies) by perceptual hash.

Photo sets gathered from tutorial repositories copy each other: the same photo at another size
or quality has other bytes, so grouping by sha256 alone lets a copy sit in the training folds
while its twin is tested. A 64-bit DCT hash (pHash) of the grey 32x32 thumbnail is the same or
a few bits apart for such copies. Each photo is hashed four ways (as it is, mirrored, its centre
and its mirrored centre), so a mirrored copy and a re-cropped copy (one photo the centre of the
other, or both cropped alike) land in the same group as the original.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np

from moodwatch.images import decode_rgb
from moodwatch.vocab import DEFAULT_MAX_PIXELS
from trainer.dataset import Item

MAX_DISTANCE = 6  # bits of 64: copies land at 0-4, different photos at 20 and more
# Mirrored and centre hashes are compared more strictly: with eight comparisons a pair instead of
# one, two different photos of one layout (a centred face on a plain background) come closer.
# A true mirror image or crop lands at 0-2.
STRICT_DISTANCE = 4
CENTRE = 0.8  # the share of each side kept by the centre crop


def perceptual_hash(rgb: np.ndarray) -> int:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return int("".join("1" if b else "0" for b in bits), 2)


def centre(rgb: np.ndarray, share: float = CENTRE) -> np.ndarray:
    h, w = rgb.shape[:2]
    dy, dx = int(h * (1 - share) / 2), int(w * (1 - share) / 2)
    return rgb[dy : h - dy, dx : w - dx]


def signatures(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """The photo, its mirror image, its centre and its mirrored centre, hashed."""
    mirrored = rgb[:, ::-1]
    return (perceptual_hash(rgb), perceptual_hash(mirrored),
            perceptual_hash(centre(rgb)), perceptual_hash(centre(mirrored)))


def hash_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int, int, int]:
    return signatures(decode_rgb(Path(path).read_bytes(), max_pixels))


def near_duplicate_groups(hashes: Mapping[str, int | tuple[int, ...]],
                          max_distance: int = MAX_DISTANCE) -> dict[str, str]:
    """Each key's group: the smallest key among the keys within max_distance of it, transitively.

    A key's value is one hash or several (signatures); two keys are twins when their first
    hashes (the photos as they are) are within max_distance, or when the first or the third
    hash (its centre) of one is within STRICT_DISTANCE of any of the other's: mirrored copies
    meet mirrored hashes, crops meet centres.
    """
    keys = sorted(hashes)
    parent = {k: k for k in keys}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    sigs = np.array([_as_tuple(hashes[k]) for k in keys], dtype=np.uint64)  # (n, s)
    probes = sigs[:, [0, 2]] if sigs.shape[1] >= 3 else sigs[:, :1]
    for i, k in enumerate(keys):
        later = sigs[i + 1 :]  # (m, s)
        # Bits apart between this photo's probes and every signature of each later photo.
        same_way = np.bitwise_count(later[:, 0] ^ sigs[i, 0])
        any_way = np.bitwise_count(later[:, None, :] ^ probes[i][None, :, None]).min(axis=(1, 2))
        for j in np.flatnonzero((same_way <= max_distance) | (any_way <= STRICT_DISTANCE)):
            a, b = root(k), root(keys[i + 1 + j])
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {k: root(k) for k in keys}


def _as_tuple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def near_duplicate_key(items: list[Item], max_pixels: int = DEFAULT_MAX_PIXELS) -> Callable[[Item], str]:
    """A grouping key for splits and folds: near-twins (and identical files) share it."""
    groups = near_duplicate_groups({it.sha256: hash_file(it.path, max_pixels) for it in items})
    return lambda it: groups[it.sha256]
