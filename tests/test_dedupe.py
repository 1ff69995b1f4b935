"""Near-duplicate photos end up in one group, so they never straddle a train/test boundary."""

from __future__ import annotations

import random

import cv2
import numpy as np

from tests.imagegen import face_like
from trainer.dataset import Item, shuffled_groups
from trainer.dedupe import near_duplicate_groups, perceptual_hash


def recompressed(rgb: np.ndarray, size: tuple[int, int], quality: int) -> np.ndarray:
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def test_resized_recompressed_copy_is_a_near_duplicate_and_other_photos_are_not():
    photos = {f"p{i}": face_like("happy" if i % 2 else "sad", i, 160) for i in range(6)}
    photos["copy-of-p1"] = recompressed(photos["p1"], (97, 97), 60)
    hashes = {k: perceptual_hash(v) for k, v in photos.items()}
    groups = near_duplicate_groups(hashes)
    assert groups["copy-of-p1"] == groups["p1"]
    assert len({groups[f"p{i}"] for i in range(6)}) == 6


def test_groups_keep_near_duplicates_on_one_side(tmp_path):
    items = [Item(tmp_path / f"{n}.jpg", "happy", sha) for n, sha in
             [("a", "1"), ("a-small", "2"), ("b", "3"), ("c", "4")]]
    groups = {"1": "1", "2": "1", "3": "3", "4": "4"}
    out = shuffled_groups(items, "happy", random.Random(0), lambda it: groups[it.sha256])
    assert sorted(len(g) for g in out) == [1, 1, 2]
    pair = next(g for g in out if len(g) == 2)
    assert {it.sha256 for it in pair} == {"1", "2"}


def test_training_split_keeps_a_resized_copy_with_its_original(tmp_path):
    """The split `moodwatch train` uses: a near-twin never sits in the test split while its
    original trains (that would flatter the test figures and the promotion decision)."""
    from tests.imagegen import write_image
    from trainer.dataset import make_items, split_items
    from trainer.dedupe import near_duplicate_key

    files = []
    for label in ("happy", "sad"):
        for i in range(10):
            seed = i if label == "happy" else 100 + i
            files.append((write_image(tmp_path / label / f"{i}.jpg", face_like(label, seed, 160)), label))
            files.append((write_image(tmp_path / label / f"{i}-copy.png",
                                      recompressed(face_like(label, seed, 160), (97, 97), 60)), label))
    items = make_items(files)
    key = near_duplicate_key(items)
    by_name = {it.path.name: it for it in items}
    assert all(key(by_name[f"{i}.jpg"]) == key(by_name[f"{i}-copy.png"]) for i in range(10))
    for seed in range(5):
        split = split_items(items, seed, group_of=key)
        side = {it.path: name for name, part in (("train", split.train), ("validation", split.validation),
                                                 ("test", split.test)) for it in part}
        for label in ("happy", "sad"):
            for i in range(10):
                assert side[tmp_path / label / f"{i}.jpg"] == side[tmp_path / label / f"{i}-copy.png"]


def test_mirrored_and_recropped_copies_are_near_duplicates():
    """Tutorial sets hold mirror images and crops of one photo: they must share a fold too."""
    from trainer.dedupe import centre, signatures

    photos = {f"p{i}": face_like("happy" if i % 2 else "sad", i, 160) for i in range(6)}
    photos["mirror-of-p2"] = np.ascontiguousarray(photos["p2"][:, ::-1])
    photos["crop-of-p3"] = np.ascontiguousarray(centre(photos["p3"]))
    full_only = near_duplicate_groups({k: perceptual_hash(v) for k, v in photos.items()})
    groups = near_duplicate_groups({k: signatures(v) for k, v in photos.items()})
    assert full_only["mirror-of-p2"] != full_only["p2"]  # what the photo's hash alone misses
    assert groups["mirror-of-p2"] == groups["p2"]
    assert groups["crop-of-p3"] == groups["p3"]
    assert len({groups[f"p{i}"] for i in range(6)}) == 6
