"""The nightly retrain from the shipped version on curated sets of several sizes, and whether its
decision agrees with an outside check.

    python benchmarks/retrain_sizes.py ../shared/datasets/people-happy-sad-extra \\
        ../shared/datasets/web-happy-sad [SIZES=16,100,300,1000] [STARTS=current,scratch]

For each size, that many photos (half happy, half sad, a seeded draw) are copied from the first
folder into a fresh data folder whose registry has the shipped version as its base, and the
nightly recipe (trainer.recipe.recipe) trains a candidate, fine-tuned from the current
weights or from scratch. The decision it made is printed beside both versions' accuracy and ECE
on photos neither saw: the shipped version's own test split of the second folder (its
params.json lists it) and the FER-2013 validation crops (FER= names that folder). With
MIN_PER_CLASS unset the setting's default applies; MIN_PER_CLASS=5 shows what the paired test
alone decides. Results are appended as JSON lines to OUT (default retrain_sizes.jsonl).

WEAK=N replaces the shipped version by a weak current one: a whole-image CNN trained from scratch
on N photos of the first folder (another draw), so the positive path shows too: a retrain that
should win. Its outside check is every photo of the second folder, which neither version saw.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from moodwatch.pipeline import Pipeline  # noqa: E402
from moodwatch.registry import Registry  # noqa: E402
from moodwatch.settings import Settings  # noqa: E402
from moodwatch.vocab import LABELS  # noqa: E402
from trainer.dataset import prepare_items  # noqa: E402
from trainer.promotion import Figures  # noqa: E402
from trainer.recipe import recipe  # noqa: E402
from trainer.report import labelled_files  # noqa: E402
from trainer.training import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def draw(source: Path, size: int, seed: int, into: Path) -> None:
    rng = random.Random(seed)
    for label in LABELS:
        files = sorted(p for p in (source / label).iterdir() if p.is_file())
        (into / label).mkdir(parents=True)
        for p in rng.sample(files, size // 2):
            shutil.copyfile(p, into / label / p.name)


def outside_photos(web: Path, shipped: Registry, fer: Path | None) -> dict[str, list[tuple[str, str]]]:
    """Photos neither version saw: the shipped version's test split, and FER validation."""
    test = shipped.require_current().params()["split"]["test"]
    sets = {"web test split": [(str(web / f["label"] / Path(f["path"]).name), f["label"]) for f in test]}
    if fer is not None:
        sets["FER validation"] = labelled_files(fer)
    return sets


def figures(pipeline: Pipeline, files: list[tuple[str, str]], max_pixels: int) -> Figures:
    from trainer.dataset import Item

    items = [Item(Path(p), label, "") for p, label in files]
    prepared = prepare_items(items, max_pixels, faces=pipeline.face is not None)
    y = np.array([LABELS.index(label) for _, label in files])
    return Figures.of(y, pipeline.scores(prepared))


def main() -> None:
    source, web = Path(sys.argv[1]), Path(sys.argv[2])
    sizes = [int(s) for s in os.environ.get("SIZES", "16,100,300,1000").split(",")]
    starts = os.environ.get("STARTS", "current,scratch").split(",")
    fer = Path(os.environ["FER"]) if os.environ.get("FER") else None
    out = Path(os.environ.get("OUT", "retrain_sizes.jsonl"))
    weak = int(os.environ.get("WEAK", "0"))
    models = make_weak(source, weak, Path(tempfile.mkdtemp(prefix="weak-"))) if weak else ROOT / "models"
    shipped = Registry(models)
    outside = {"all web photos": labelled_files(web)} if weak else outside_photos(web, shipped, fer)
    current = Pipeline.load(shipped.require_current().path)
    base = Settings(model_dir=models)
    current_figs = {name: figures(current, files, base.max_pixels) for name, files in outside.items()}
    for size in sizes:
        for start in starts:
            row = retrain_once(source, size, start, outside, current_figs, models)
            row["weak_current"] = weak or None
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print_row(row)


def make_weak(source: Path, size: int, root: Path) -> Path:
    """A registry whose current version is a whole-image CNN trained from scratch on size photos."""
    data = root / "data"
    draw(source, size, seed=size + 7, into=data)
    settings = Settings(data_dir=data, model_dir=root / "models", local_model_dir=root / "models",
                        retrain_min_per_class=5)
    (root / "models").mkdir()
    result = train(settings, recipe(settings, data, no_faces=True, start="scratch", progress=False))
    assert result.promoted, result.reason
    return root / "models"


def retrain_once(source: Path, size: int, start: str, outside: dict[str, list[tuple[str, str]]],
                 current_figs: dict[str, Figures], models: Path) -> dict:
    """One nightly recipe run on a fresh draw; its decision and both versions' outside figures."""
    with tempfile.TemporaryDirectory(prefix=f"retrain{size}-") as tmp:
        data = Path(tmp) / "data"
        draw(source, size, seed=size, into=data)
        extra = {"retrain_min_per_class": int(os.environ["MIN_PER_CLASS"])} \
            if os.environ.get("MIN_PER_CLASS") else {}
        settings = Settings(data_dir=data, model_dir=models, **extra)
        t0 = time.perf_counter()
        result = train(settings, recipe(settings, data, start=start, progress=False))
        decision = result.decision
        row = {"size": size, "start": start, "promoted": result.promoted, "reason": result.reason,
               "test_n": decision.test_n, "candidate_test": decision.candidate.__dict__,
               "current_test": decision.current.__dict__ if decision.current else None,
               "seconds": round(time.perf_counter() - t0, 1), "outside": {}}
        candidate = Pipeline.load(result.version.path)
        for name, files in outside.items():
            row["outside"][name] = {"candidate": figures(candidate, files, settings.max_pixels).__dict__,
                                    "current": current_figs[name].__dict__}
        return row


def print_row(row: dict) -> None:
    said = "promoted" if row["promoted"] else "not promoted"
    cells = "; ".join(
        f"{name}: current {v['current']['accuracy']:.3f}/{v['current']['ece']:.3f} "
        f"candidate {v['candidate']['accuracy']:.3f}/{v['candidate']['ece']:.3f} (n {v['current']['n']})"
        for name, v in row["outside"].items())
    print(f"{row['size']:>5} photos, from {row['start']:<8} {said:<13} own test n {row['test_n']:<4} "
          f"{row['seconds']:>6.0f}s  | {cells}\n      {row['reason']}", flush=True)


if __name__ == "__main__":
    main()
