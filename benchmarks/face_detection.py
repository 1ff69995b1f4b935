"""Face-found rate and detector speed on a folder of photos, for each detection policy.

    python benchmarks/face_detection.py ../shared/datasets/web-happy-sad

Photos are decoded first (as the worker does); the timed part is detection alone, one thread.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from moodwatch import detector, faces  # noqa: E402
from moodwatch.images import ImageRejected, decode_rgb, extension_allowed  # noqa: E402

POLICIES = [  # primary, tile aspect, fallback
    ("short", detector.TILE_ASPECT, None),
    ("short", float("inf"), None),
    ("full", detector.TILE_ASPECT, None),
    ("back", detector.TILE_ASPECT, None),
    ("short", detector.TILE_ASPECT, "back"),
]


def photos(folder: Path) -> list[np.ndarray]:
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and extension_allowed(p.name):
            try:
                rgb = decode_rgb(p.read_bytes())
            except ImageRejected:
                continue
            if max(rgb.shape[:2]) > faces.CLOSE_UP_SIDE:  # close-ups are not searched
                out.append(rgb)
    return out


def main() -> None:
    images = photos(Path(sys.argv[1]))
    print(f"{len(images)} photos (close-ups left out)")
    for primary, aspect, fallback in POLICIES:
        detector.TILE_ASPECT = aspect
        faces.PRIMARY, faces.FALLBACK = primary, fallback
        faces.check_detector()
        t0 = time.perf_counter()
        found = [len(faces.detect_faces(rgb)) for rgb in images]
        seconds = time.perf_counter() - t0
        tiles = "no tiles" if aspect == float("inf") else f"tiles over {aspect:g}:1"
        name = f"{primary} ({tiles})" + (f", then {fallback} where none" if fallback else "")
        print(f"{name:<42} face found in {np.mean([n > 0 for n in found]):.1%}  "
              f"faces/photo {np.mean(found):.2f}  {len(images) / seconds:.0f} photos/s "
              f"({1000 * seconds / len(images):.2f} ms each)", flush=True)


if __name__ == "__main__":
    main()
