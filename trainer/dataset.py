"""Load curated images and split them reproducibly, keeping duplicate files on one side."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moodwatch.files import sha256_file
from moodwatch.settings import LABELS

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
