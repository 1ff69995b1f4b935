"""Load curated images and split them reproducibly, keeping duplicate files on one side; their
labels and prepared images for training."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moodwatch.files import sha256_file
from moodwatch.pipeline import Prepared, prepare_path
from moodwatch.vocab import LABELS

MIN_PER_CLASS = 5


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    sha256: str

    @property
    def y(self) -> int:
        # sigmoid output is P(sad): labels sorted alphabetically, as image_dataset_from_directory does
        return LABELS.index(self.label)


@dataclass
class Split:
    train: list[Item]
    validation: list[Item]
    test: list[Item]


def make_items(files: list[tuple[Path, str]]) -> list[Item]:
    items = [Item(Path(p), label, sha256_file(Path(p))) for p, label in files]
    counts = {label: sum(1 for i in items if i.label == label) for label in LABELS}
    for label, n in counts.items():
        if n == 0:
            raise DatasetError(f"class {label!r} has no usable images")
        if n < MIN_PER_CLASS:
            raise DatasetError(
                f"class {label!r} has {n} usable images; at least {MIN_PER_CLASS} are needed to "
                "split into train, validation and test"
            )
    return items


def prepare_items(items: list[Item], max_pixels: int, faces: bool, workers: int = 2) -> list[Prepared]:
    """The shared preprocessing (whole image, and face crops when the pipeline uses faces)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda it: prepare_path(it.path, max_pixels, faces), items))


def labels_of(items: list[Item]) -> np.ndarray:
    return np.array([it.y for it in items], dtype=np.float32)


def fingerprint(items: list[Item]) -> str:
    """Identifies the training data: the same labelled bytes give the same fingerprint."""
    h = hashlib.sha256()
    for line in sorted(f"{i.label}:{i.sha256}" for i in items):
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def shuffled_groups(items: list[Item], label: str, rng: random.Random,
                    group_of: Callable[[Item], str] | None = None) -> list[list[Item]]:
    """The label's items grouped by identical bytes (or by group_of), groups in a seeded order."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if item.label == label:
            groups[group_of(item) if group_of else item.sha256].append(item)
    keys = sorted(groups)
    rng.shuffle(keys)
    return [sorted(groups[k], key=lambda it: str(it.path)) for k in keys]


def split_items(
    items: list[Item], seed: int, fractions: tuple[float, float, float] = (0.7, 0.2, 0.1),
    group_of: Callable[[Item], str] | None = None,
) -> Split:
    """Stratified by label; files with the same bytes (or the same group_of key: near-twins,
    see trainer.dedupe) form one group that lands on one side.

    The result depends only on the files' labels and hashes and the seed, not on the order
    in which the folder was listed.
    """
    rng = random.Random(seed)
    split = Split([], [], [])
    for label in LABELS:
        groups = shuffled_groups(items, label, rng, group_of)
        n = len(groups)
        n_test = max(1, round(n * fractions[2]))
        n_val = max(1, round(n * fractions[1]))
        if n - n_test - n_val < 1:
            raise DatasetError(f"class {label!r} has too few distinct images to split")
        for i, group in enumerate(groups):
            side = split.test if i < n_test else split.validation if i < n_test + n_val else split.train
            side.extend(group)
    return split


def stable_side(sha256: str, test_fraction: float, validation_fraction: float) -> str:
    """A photo's side from its content alone: the same bytes land on the same side in every
    retrain, however many photos are added, so a current version was never trained on the photos
    its successor is tested on."""
    # Hashed again, salted: a photo set chosen by its hashes (people-happy-sad-extra kept the
    # lowest sha256 first) would otherwise put most of its photos on the test side.
    u = int(hashlib.sha256(b"moodwatch-split:" + sha256.encode()).hexdigest()[:12], 16) / 16**12
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + validation_fraction else "train"


def stable_split(
    items: list[Item], group_of: Callable[[Item], str] | None = None, *,
    test_fraction: float = 0.25, validation_fraction: float = 0.15,
    seen: frozenset[str] = frozenset(),
) -> Split:
    """The retrain's split: each photo's side by the hash of its bytes (:func:`stable_side`).

    ``seen`` holds the sha256 of photos the current version was trained or validated on: they
    (and their near-twins) are never test photos, so both versions are tested on photos neither
    saw. A train or validation photo that is a near-twin (``group_of``) of a test photo is left
    out of training altogether: the test side stays what the hashes say.
    """
    key = group_of or (lambda it: it.sha256)
    seen_groups = {key(it) for it in items if it.sha256 in seen}
    side = {}
    for it in items:
        s = stable_side(it.sha256, test_fraction, validation_fraction)
        if s == "test" and (it.sha256 in seen or key(it) in seen_groups):
            s = "train"
        side[it] = s
    test_groups = {key(it) for it in items if side[it] == "test"}
    ordered = sorted(items, key=lambda it: (it.label, it.sha256, str(it.path)))
    split = Split(
        train=[it for it in ordered if side[it] == "train" and key(it) not in test_groups],
        validation=[it for it in ordered if side[it] == "validation" and key(it) not in test_groups],
        test=[it for it in ordered if side[it] == "test"],
    )
    def unseen(it: Item) -> bool:
        return it.sha256 not in seen and key(it) not in seen_groups

    for name in ("test", "validation"):
        for label in LABELS:
            _borrow_from_train(split, name, label, unseen if name == "test" else lambda it: True)
    return split


def _borrow_from_train(split: Split, side: str, label: str, eligible: Callable[[Item], bool]) -> None:
    """A side with no photo of a label (a handful of curated photos) takes the train photo of
    that label with the lowest hash: deterministic, and only ever needed below the minimum that
    promotion requires (MOODWATCH_RETRAIN_MIN_PER_CLASS), where nothing is promoted anyway."""
    target = getattr(split, side)
    if any(it.label == label for it in target):
        return
    candidates = [it for it in split.train if it.label == label and eligible(it)]
    if not candidates or sum(1 for it in split.train if it.label == label) < 2:
        raise DatasetError(f"class {label!r} has too few distinct images to split (near-duplicates "
                           "count once)")
    chosen = min(candidates, key=lambda it: it.sha256)
    split.train.remove(chosen)
    target.append(chosen)
