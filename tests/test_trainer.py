import json
import os
from pathlib import Path

import numpy as np
import pytest

from moodwatch.registry import Registry
from moodwatch.settings import Settings
from tests.imagegen import encode, face_like, make_curated, write_image
from trainer.cleaning import clean_folders
from trainer.dataset import DatasetError, Item, make_items, prepare_items, split_items
from trainer.recipe import TrainOptions
from trainer.training import train


def test_cleaning_quarantines_each_kind_of_dodgy_file(tmp_path):
    data = make_curated(tmp_path / "data", per_class=3)
    happy = data / "happy"
    (happy / "notes.txt").write_text("not a photo")
    (happy / "text.jpg").write_text("a text file wearing a jpg name")
    (happy / "empty.png").write_bytes(b"")
    (happy / "anim.gif").write_bytes(b"GIF89a" + b"\0" * 50)
    jpg = encode(face_like("happy", 9, 200), ".jpg")
    (happy / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    outside = write_image(tmp_path / "outside.png", face_like("happy", 5))
    (happy / "link.png").symlink_to(outside)
    (happy / "png_named.jpg").write_bytes(encode(face_like("happy", 4)))  # fine: a real image

    report = clean_folders(data, tmp_path / "quarantine", max_pixels=10_000_000)

    reasons = {Path(src).name: reason for src, _, reason in report.quarantined}
    assert set(reasons) == {"notes.txt", "text.jpg", "empty.png", "anim.gif", "cut.jpg", "link.png"}
    assert "extension" in reasons["notes.txt"]
    assert "signature" in reasons["text.jpg"]
    assert "empty" in reasons["empty.png"]
    assert "truncated" in reasons["cut.jpg"]
    assert "symbolic link" in reasons["link.png"]
    assert report.kept == {"happy": 4, "sad": 3}
    # Nothing deleted: every dodgy file is in quarantine, and the link's target is untouched.
    for _, dest, _ in report.quarantined:
        assert os.path.lexists(dest)
    assert outside.exists()
    assert (tmp_path / "quarantine" / "happy" / "link.png").is_symlink()
    log = [json.loads(line) for line in (tmp_path / "quarantine" / "reasons.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(entry["reason"] for entry in log)


def test_quarantine_never_overwrites(tmp_path):
    data = make_curated(tmp_path / "data", per_class=1)
    (tmp_path / "quarantine" / "happy").mkdir(parents=True)
    (tmp_path / "quarantine" / "happy" / "bad.jpg").write_text("earlier one")
    (data / "happy" / "bad.jpg").write_text("new one")
    clean_folders(data, tmp_path / "quarantine", max_pixels=10_000_000)
    assert (tmp_path / "quarantine" / "happy" / "bad.jpg").read_text() == "earlier one"
    assert (tmp_path / "quarantine" / "happy" / "bad-1.jpg").read_text() == "new one"


def _items(n_per_class: int, dup_every: int = 0) -> list[Item]:
    items = []
    for label in ("happy", "sad"):
        for i in range(n_per_class):
            sha = f"{label}{i // dup_every if dup_every else i:04d}".ljust(64, "0")
            items.append(Item(Path(f"/x/{label}/{i}.jpg"), label, sha))
    return items


def test_split_is_stratified_reproducible_and_order_independent():
    items = _items(50)
    a = split_items(items, seed=7)
    b = split_items(list(reversed(items)), seed=7)
    c = split_items(items, seed=8)
    assert [i.path for i in a.test] == [i.path for i in b.test]
    assert [i.path for i in a.test] != [i.path for i in c.test]
    for side, expected in ((a.train, 35), (a.validation, 10), (a.test, 5)):
        assert sum(i.label == "happy" for i in side) == expected
        assert sum(i.label == "sad" for i in side) == expected


def test_duplicate_bytes_never_cross_the_split():
    items = _items(60, dup_every=3)  # every hash appears three times
    s = split_items(items, seed=1)
    sides = [{i.sha256 for i in side} for side in (s.train, s.validation, s.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sum(len(x) for x in (s.train, s.validation, s.test)) == len(items)


def test_too_few_images_is_a_clear_error(tmp_path):
    data = make_curated(tmp_path / "d", per_class=2)
    files = [(p, p.parent.name) for p in data.rglob("*.*")]
    with pytest.raises(DatasetError, match="at least 5"):
        make_items(files)


def test_preprocessing_parity_train_and_serve(tmp_path, tiny_model_dir):
    """The same file reaches the model as the same tensor, and gets the same score, both ways."""
    from moodwatch.images import load_image
    from moodwatch.pipeline import Pipeline
    from worker.inference import Classifier

    paths = [
        write_image(tmp_path / "a.jpg", face_like("happy", 1, 700)),
        write_image(tmp_path / "b.png", face_like("sad", 2, 50)),
        write_image(tmp_path / "c.BMP", face_like("sad", 3, 300)),
    ]
    items = [Item(p, "happy", "0" * 64) for p in paths]
    x_loaded = [load_image(p) for p in paths]  # the core function behind both
    trained_on = prepare_items(items, 10_000_000, faces=True)
    version = Registry(tiny_model_dir).require_current()
    classifier = Classifier(version, batch_size=4)
    served = [classifier._decode(str(p), 10_000_000)[0] for p in paths]
    for a, b, c in zip(x_loaded, trained_on, served, strict=True):
        np.testing.assert_array_equal(a, b.image)
        np.testing.assert_array_equal(b.image, c.image)
        assert b.image.shape == (256, 256, 3) and b.image.dtype == np.uint8
    train_scores = Pipeline.load(version.path).scores(trained_on)
    serve_scores = [p.score for p in classifier.classify_paths([str(p) for p in paths])]
    np.testing.assert_allclose(train_scores, serve_scores, atol=1e-5)
    classifier.close()


def test_end_to_end_training_and_promotion(tmp_path):
    data = make_curated(tmp_path / "data", per_class=14)
    (data / "sad" / "junk.jpg").write_text("junk")
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models")
    first = train(settings, TrainOptions(data_dir=data, epochs=2, batch_size=8, progress=False))

    v = first.version.path
    assert first.promoted and Registry.for_settings(settings).current_name() == first.version.name
    assert (v / "model.keras").is_file()
    assert (v / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (v / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert list((v / "tensorboard").rglob("events.out.tfevents.*"))
    metrics = json.loads((v / "metrics.json").read_text())["test"]
    for key in ("precision", "recall", "accuracy", "f1", "confusion_matrix"):
        assert key in metrics
    cm = metrics["confusion_matrix"]["rows_true_cols_predicted"]
    assert sum(map(sum, cm)) == metrics["n"] > 0
    params = json.loads((v / "params.json").read_text())
    assert len(params["data_fingerprint"]) == 64
    assert (settings.quarantine_dir / "sad" / "junk.jpg").exists()

    # A second run is compared with the current model on the same test files.
    second = train(settings, TrainOptions(data_dir=data, epochs=1, batch_size=8, progress=False))
    assert second.current_metrics is not None
    assert second.current_metrics["n"] == second.metrics["n"]
    current = Registry.for_settings(settings).current_name()
    assert (current == second.version.name) == second.promoted
    assert len(Registry.for_settings(settings).runs()) == 2
    # Versions are mirrored into the database's model_versions table.
    from sqlalchemy import select

    from db.engine import make_engine, make_sessionmaker
    from db.models import ModelVersion

    with make_sessionmaker(make_engine(settings.database))() as s:
        names = {r.name: r for r in s.scalars(select(ModelVersion))}
    assert set(names) == {first.version.name, second.version.name}
    assert names[first.version.name].accuracy == first.metrics["accuracy"]


def test_training_with_a_face_model_ships_it_and_serves_it(tmp_path):
    from trainer.face_model import make_face_model
    from worker.inference import Classifier

    base = tmp_path / "face-base.keras"
    make_face_model().save(base)
    data = make_curated(tmp_path / "data", per_class=8)
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models")
    result = train(settings, TrainOptions(data_dir=data, epochs=1, batch_size=8, progress=False,
                                          face_base=base, face_epochs=1))
    v = result.version.path
    assert (v / "face.keras").is_file() and (v / "pipeline.json").is_file()
    # The never-fine-tuned face model is kept for close-ups, byte for byte.
    assert (v / "face-closeup.keras").read_bytes() == base.read_bytes()
    pipeline = json.loads((v / "pipeline.json").read_text())
    assert pipeline["temperature"] > 0 and sum(pipeline["regimes_on_validation"].values()) > 0
    assert json.loads((v / "params.json").read_text())["faces"] is True
    # The next run starts from the current version's face model as it came from the large face
    # set (never fine-tuned): nightly runs do not fine-tune a fine-tuned model again.
    second = train(settings, TrainOptions(data_dir=data, epochs=1, batch_size=8, progress=False,
                                          face_epochs=0, force_promote=True))
    params = json.loads((second.version.path / "params.json").read_text())
    assert params["face_base"].endswith("face-closeup.keras")
    assert (second.version.path / "face-closeup.keras").read_bytes() == base.read_bytes()
    classifier = Classifier(Registry.for_settings(settings).require_current(), batch_size=4)
    assert classifier.pipeline.uses_faces and classifier.pipeline.close_up is not None
    close_up = write_image(tmp_path / "closeup.png", face_like("sad", 9, 48))
    big = write_image(tmp_path / "big.jpg", face_like("happy", 9, 400))
    preds = classifier.classify_paths([str(close_up), str(big)])
    assert all(p.label in ("happy", "sad") and 0.5 <= p.confidence <= 1 for p in preds)
    classifier.close()


def test_dangling_current_pointer_does_not_block_training(tmp_path):
    data = make_curated(tmp_path / "data", per_class=6)
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "current").write_text("v-deleted\n")
    result = train(settings, TrainOptions(data_dir=data, epochs=1, batch_size=8, progress=False))
    assert result.promoted and Registry.for_settings(settings).current_name() == result.version.name


def test_a_failed_training_leaves_no_version_folder(tmp_path, monkeypatch):
    """The version folder was made before fitting, and stayed behind, half-filled, when fitting
    failed. The error still reaches the caller."""
    import trainer.training

    data = make_curated(tmp_path / "data", per_class=12)
    settings = Settings(data_dir=data, model_dir=tmp_path / "models")
    (tmp_path / "models").mkdir()

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory while fitting")

    monkeypatch.setattr(trainer.training, "fit_models", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(settings, TrainOptions(data_dir=data, epochs=1, batch_size=8, progress=False, no_faces=True))
    assert list((tmp_path / "models").iterdir()) == []
