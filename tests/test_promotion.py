"""The nightly retrain can only make the model better: enough photos, a stable test split, a
paired test with a margin, calibration not worse, and a candidate that starts from what works."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from trainer.dataset import Item, stable_side, stable_split
from trainer.promotion import ALPHA, ECE_MARGIN, decide, mcnemar_p


def scores_right_on(y: np.ndarray, right: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """P(sad) scores that are right exactly where ``right`` is true, at the given confidence."""
    correct = np.where(y == 1, confidence, 1 - confidence)
    return np.where(right, correct, 1 - correct).astype(np.float32)


def test_mcnemar_exact_tail():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_p(3, 3) == pytest.approx(sum(__import__("math").comb(6, k) for k in range(3, 7)) / 64)
    assert mcnemar_p(1, 4) > 0.9


def test_equal_or_slightly_better_candidate_is_not_promoted():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    current_right = np.ones(60, bool)
    current_right[:10] = False
    current = scores_right_on(y, current_right)
    same = decide(y, current.copy(), current, enough_data=True)
    assert not same.promoted and same.candidate_only_right == 0 and same.p_value == 1.0
    # Two more right than the current version out of 60: real, but not a margin a test supports.
    better_right = current_right.copy()
    better_right[:2] = True
    slightly = decide(y, scores_right_on(y, better_right), current, enough_data=True)
    assert slightly.candidate.accuracy > slightly.current.accuracy
    assert not slightly.promoted and slightly.p_value >= ALPHA
    assert "not better by a margin" in slightly.reason and "60 test photos" in slightly.reason


def test_worse_candidate_is_not_promoted_and_a_clearly_better_one_is():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    current_right = rng.random(80) > 0.2
    current = scores_right_on(y, current_right)
    worse = decide(y, scores_right_on(y, current_right & (rng.random(80) > 0.2)), current, enough_data=True)
    assert not worse.promoted
    better_right = current_right.copy()
    better_right[~current_right] = True  # right on every photo the current one gets wrong
    better = decide(y, scores_right_on(y, better_right), current, enough_data=True)
    assert better.promoted and better.p_value < ALPHA, better.reason
    assert better.test_n == 80 and better.current_only_right == 0


def test_better_but_worse_calibrated_candidate_is_not_promoted():
    y = np.array([0, 1] * 40)
    current_right = np.ones(80, bool)
    current_right[:16] = False
    current = scores_right_on(y, current_right, confidence=0.8)  # 80% right at 0.8: calibrated
    better_right = np.ones(80, bool)
    better_right[:4] = False  # 95% right, but said at 0.51: ECE about 0.44
    overcautious = decide(y, scores_right_on(y, better_right, confidence=0.51), current, enough_data=True)
    assert overcautious.candidate.ece > overcautious.current.ece + ECE_MARGIN
    assert not overcautious.promoted and "calibration worse" in overcautious.reason


def test_below_the_minimum_nothing_is_promoted_even_forced():
    y = np.array([0, 1] * 5)
    decision = decide(y, scores_right_on(y, np.ones(10, bool)), None, enough_data=False,
                      minimum_note="too few", force=True)
    assert not decision.promoted and "too few" in decision.reason


def _items(n: int, start: int = 0) -> list[Item]:
    return [Item(Path(f"/x/{i}.jpg"), "happy" if i % 2 else "sad",
                 hashlib.sha256(str(i).encode()).hexdigest()) for i in range(start, start + n)]


def test_stable_split_keeps_each_photo_on_its_side_when_photos_are_added():
    first = stable_split(_items(300))
    second = stable_split(_items(300) + _items(700, start=300))
    for name in ("train", "validation", "test"):
        before = {it.sha256 for it in getattr(first, name)}
        after = {it.sha256 for it in getattr(second, name)}
        assert before <= after, name
    assert 0.15 < len(second.test) / 1000 < 0.35


def test_stable_split_never_tests_on_what_the_current_version_saw_nor_trains_on_test_twins():
    items = _items(600)
    seen = frozenset(it.sha256 for it in items[:100])

    def group(it: Item) -> str:  # near-twins: photo i and photo i + 300
        return str(int(it.path.stem) % 300)

    split = stable_split(items, group_of=group, seen=seen)
    seen_groups = {group(it) for it in items[:100]}
    assert split.test and not any(it.sha256 in seen or group(it) in seen_groups for it in split.test)
    test_groups = {group(it) for it in split.test}
    assert not any(group(it) in test_groups for it in split.train + split.validation)
    assert len(split.train) > 300


def test_a_photos_side_depends_on_its_bytes_only():
    sha = hashlib.sha256(b"photo").hexdigest()
    assert len({stable_side(sha, 0.25, 0.15) for _ in range(3)}) == 1
    sides = [stable_side(hashlib.sha256(str(random.random()).encode()).hexdigest(), 0.25, 0.15)
             for _ in range(4000)]
    assert 0.22 < sides.count("test") / 4000 < 0.28


@pytest.mark.slow
def test_the_candidate_starts_from_the_current_weights(tmp_path, tiny_model_dir):
    """With a learning rate of zero, fine-tuning leaves the kernels where it found them: the
    current version's. From scratch they are random: the check can tell the two apart."""
    from moodwatch.modelio import load_model
    from moodwatch.registry import Registry
    from moodwatch.settings import Settings
    from tests.imagegen import make_curated
    from trainer.recipe import TrainOptions, fit_models, whole_start

    current = Registry(tiny_model_dir).require_current()
    options = TrainOptions(data_dir=tmp_path, epochs=1, learning_rate=0.0, progress=False, no_faces=True)
    start = whole_start(options, current)
    assert start == current.model_path
    assert whole_start(TrainOptions(data_dir=tmp_path, epochs=1, start="scratch"), current) is None
    settings = Settings(data_dir=make_curated(tmp_path / "data", per_class=6), model_dir=tiny_model_dir)
    from trainer.cleaning import clean_folders
    from trainer.dataset import labels_of, make_items, prepare_items

    items = make_items(clean_folders(settings.data_dir, settings.quarantine_dir, settings.max_pixels).files)
    prep = prepare_items(items, settings.max_pixels, faces=False)
    y = labels_of(items)

    def kernels(model) -> list[np.ndarray]:
        return [w for layer in model.layers if hasattr(layer, "kernel") for w in [layer.kernel.numpy()]]

    reference = kernels(load_model(current.model_path))
    tuned, _ = fit_models(options, prep, y, prep, y, face_base=None, init_whole=start)
    scratch, _ = fit_models(options, prep, y, prep, y, face_base=None, init_whole=None)
    assert all(np.array_equal(a, b) for a, b in zip(kernels(tuned.whole), reference, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(kernels(scratch.whole), reference, strict=True))


@pytest.fixture
def broker(tmp_path):
    from moodwatch.broker import embedded_url, start_embedded

    client = start_embedded(tmp_path / "redis" / "redis.db")
    yield embedded_url(client)
    client.shutdown()


@pytest.mark.slow
def test_too_few_curated_photos_is_a_reason_to_wait(tmp_path, broker):
    """8 happy and 8 sad photos: the nightly job skips with one line naming the counts and the
    minimum; forced, it trains but the new version is never promoted."""
    from moodwatch.registry import Registry
    from moodwatch.settings import Settings
    from tests.imagegen import make_curated
    from trainer.retrain import retrain

    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models", retrain_min_per_class=10)
    make_curated(settings.data_dir, per_class=8)
    skipped = retrain(settings, broker, epochs=1)
    assert skipped["outcome"] == "skipped"
    assert "8 happy, 8 sad" in skipped["reason"] and "minimum is 10 per class" in skipped["reason"]
    registry = Registry.for_settings(settings)
    assert registry.versions() == [] and registry.runs()[-1]["reason"] == skipped["reason"]
    forced = retrain(settings, broker, epochs=1, force=True)
    assert forced["outcome"] == "trained" and "too few curated photos" in forced["reason"], forced
    assert registry.current_name() is None
    assert registry.runs()[-1]["test_n"] == forced["decision"]["test_n"] > 0


@pytest.mark.slow
def test_a_retrain_in_a_fresh_clone_leaves_git_status_clean(tmp_path, redis_url):
    """The user's versions, pointer and run log live under data/: nothing tracked changes, so
    `git pull` never conflicts. The candidate fine-tunes the shipped version."""
    import subprocess
    import sys

    from moodwatch.registry import Registry
    from moodwatch.settings import Settings
    from tests.imagegen import make_curated
    from tests.procs import ROOT

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    make_curated(clone / "data", per_class=8, start=400)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MOODWATCH_")}
    env.update(MOODWATCH_HOME=str(tmp_path / "home"), MOODWATCH_BROKER_URL=redis_url,
               MOODWATCH_RETRAIN_MIN_PER_CLASS="5", TF_CPP_MIN_LOG_LEVEL="2")
    # The console script, not `python -m` (which would import the clone's copy of the code first).
    done = subprocess.run([str(Path(sys.executable).parent / "moodwatch"), "retrain", "--epochs", "1"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "curated photos:" in done.stderr + done.stdout  # the split sizes, before training
    assert "candidate" in done.stdout and "current" in done.stdout, done.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True)
    assert status.stdout == "", status.stdout
    registry = Registry.for_settings(Settings(data_dir=clone / "data", model_dir=clone / "models"))
    run = registry.runs()[-1]
    assert run["outcome"] in ("promoted", "trained") and run["test_n"] > 0
    version = registry.get(run["version"])
    assert version.path.is_relative_to(clone / "data")
    assert version.metrics()["started_from"] == (clone / "models" / "current").read_text().strip()


def test_a_set_chosen_by_its_hashes_still_splits_evenly():
    """people-happy-sad-extra kept the lowest sha256 first: a split on the raw hash put 57 of
    100 of its photos on the test side."""
    low = [f"{i:08x}".rjust(12, "0") + "f" * 52 for i in range(2000)]  # all below 16**4 / 16**12
    share = sum(stable_side(sha, 0.25, 0.15) == "test" for sha in low) / len(low)
    assert 0.21 < share < 0.29
