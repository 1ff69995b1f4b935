"""The LiteRT conversions of a version's CNNs score as its Keras models (issue 24).

The same photos, prepared once by the one preprocessing function, go through the Keras pipeline
and the LiteRT one; their largest score difference must stay within PARITY_BOUND (1e-4 in P(sad))
for the tiny trained model and for the shipped version. A conversion of another model must fail
the same check, and must not be served where the manifest does not vouch for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib import cbook

from moodwatch.litert import FLOAT32, LITE_MANIFEST, PARITY_BOUND, LiteModel, lite_name
from moodwatch.pipeline import Pipeline, Prepared, prepare_bytes
from moodwatch.registry import Registry
from tests.imagegen import encode, face_like

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = Registry(ROOT / "models").require_current().path


def photos() -> list[bytes]:
    """A fixed set: generated faces of both kinds at several sizes (close-ups among them), a
    real face (Grace Hopper, matplotlib's sample), and that face pasted small into noise."""
    out = [encode(face_like(kind, seed, size), ext)
           for seed, (kind, size, ext) in enumerate([("happy", 96, ".png"), ("sad", 96, ".jpg"),
                                                    ("happy", 300, ".jpg"), ("sad", 500, ".png"),
                                                    ("happy", 48, ".png"), ("sad", 60, ".bmp"),
                                                    ("sad", 700, ".jpg"), ("happy", 200, ".bmp")])]
    hopper = cv2.cvtColor(cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
                          cv2.COLOR_BGR2RGB)
    canvas = np.random.default_rng(3).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    canvas[100:260, 300:460] = cv2.resize(hopper[40:440, 50:450], (160, 160), interpolation=cv2.INTER_AREA)
    return [*out, encode(hopper, ".jpg"), encode(canvas, ".jpg")]


def prepared_for(pipeline: Pipeline) -> list[Prepared]:
    return [prepare_bytes(data, faces=pipeline.uses_faces) for data in photos()]


def largest_score_difference(a: Pipeline, b: Pipeline, prepared: list[Prepared]) -> float:
    """The parity check: the largest difference in calibrated P(sad), and in every model's own
    score (the whole image, each face crop, each close-up), between two pipelines."""
    diffs = [np.abs(a.scores(prepared) - b.scores(prepared)).max(),
             np.abs(a.whole_scores(np.stack([p.image for p in prepared]))
                    - b.whole_scores(np.stack([p.image for p in prepared]))).max()]
    crops = [p.faces.crops for p in prepared if p.faces is not None and len(p.faces.crops)]
    if a.uses_faces and crops:
        crops = np.concatenate(crops)
        for close_up in (False, True):
            diffs.append(np.abs(a.face_scores(crops, close_up) - b.face_scores(crops, close_up)).max())
    return float(max(diffs))


def tiny_version(tiny_model_dir: Path) -> Path:
    return Registry(tiny_model_dir).require_current().path


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_litert_scores_as_keras(which, tiny_model_dir):
    folder = tiny_version(tiny_model_dir) if which == "tiny" else SHIPPED
    keras_pipe = Pipeline.load(folder, batch_size=4, runtime="keras")
    lite_pipe = Pipeline.load(folder, batch_size=4, precision=FLOAT32)  # int8: tests/test_litert_int8.py
    assert keras_pipe.runtime == "keras" and lite_pipe.runtime == "litert"
    prepared = prepared_for(lite_pipe)
    if which == "shipped":  # the face models are exercised: real faces found, close-ups scored
        assert any(p.faces is not None and p.faces.boxes for p in prepared)
        assert any(p.faces is not None and p.faces.close_up for p in prepared)
    # 10 photos in batches of 4: the LiteRT model takes the short last batch unpadded.
    assert largest_score_difference(keras_pipe, lite_pipe, prepared) <= PARITY_BOUND


def test_the_check_fails_with_another_models_conversion(tiny_model_dir):
    """The shipped version's whole-image CNN in place of the tiny one's: the check sees it."""
    folder = tiny_version(tiny_model_dir)
    keras_pipe = Pipeline.load(folder, batch_size=4, runtime="keras")
    lite = Pipeline.load(folder, batch_size=4, precision=FLOAT32)
    wrong = Pipeline(LiteModel(SHIPPED / "model.tflite"), lite.face, lite.close_up, lite.combination, 4)
    assert largest_score_difference(keras_pipe, wrong, prepared_for(keras_pipe)) > PARITY_BOUND


@pytest.mark.parametrize("swap", ["model.tflite", "model.keras"])
def test_a_conversion_not_of_this_model_is_not_served(swap, tiny_model_dir, tmp_path, caplog):
    """A .tflite copied from another version, or a .keras replaced after conversion: the
    manifest no longer vouches for the pair, and the Keras model serves."""
    folder = shutil.copytree(tiny_version(tiny_model_dir), tmp_path / "version")
    shutil.copyfile(SHIPPED / swap, folder / swap)
    (folder / "model.dynamic-int8.tflite").unlink(missing_ok=True)  # int8 would serve (and be vouched)
    pipeline = Pipeline.load(folder, batch_size=4)
    assert not isinstance(pipeline.whole, LiteModel)
    assert "was not converted from" in caplog.text
    assert pipeline.whole_scores(np.zeros((1, 256, 256, 3), np.uint8)).shape == (1,)


def test_training_writes_vouched_conversions(tiny_model_dir):
    """The tiny version has the whole-image CNN only; the shipped one's face CNNs were converted
    by the same function (trainer.convert), and the parity test above covers them."""
    folder = tiny_version(tiny_model_dir)
    entries = json.loads((folder / LITE_MANIFEST).read_text())["models"]
    float32 = {k: e for k, e in entries.items() if e["quantization"] == FLOAT32}  # int8: test_litert_int8
    keras_files = [n for n in ("model.keras", "face.keras", "face-closeup.keras") if (folder / n).is_file()]
    assert set(float32) == {lite_name(n) for n in keras_files}
    assert all(e["largest_difference_on_check_inputs"] <= PARITY_BOUND for e in float32.values())


def test_a_litert_pipeline_runs_without_tensorflow():
    """The point of serving on LiteRT: a worker process need not import TensorFlow at all."""
    code = ("import sys, numpy as np; from moodwatch.pipeline import Pipeline, prepare_bytes; "
            f"p = Pipeline.load({str(SHIPPED)!r}); assert p.runtime == 'litert'; "
            "import cv2; data = cv2.imencode('.jpg', np.full((300, 300, 3), 90, np.uint8))[1].tobytes(); "
            "print(p.scores([prepare_bytes(data, faces=True)])); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_conversion_that_does_not_score_as_keras_is_not_kept(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """The converter checks its own output: a flatbuffer of another model (here the shipped
    version's, standing in for a converter bug) is refused, and the version is left to Keras."""
    import trainer.convert as convert

    folder = shutil.copytree(tiny_version(tiny_model_dir), tmp_path / "version")
    (folder / "model.tflite").unlink()
    (folder / "model.dynamic-int8.tflite").unlink(missing_ok=True)
    monkeypatch.setattr(convert, "to_tflite", lambda *a, **k: (SHIPPED / "model.tflite").read_bytes())
    with pytest.raises(convert.ConversionError, match="scores differ"):
        convert.convert_version(folder)
    assert not (folder / "model.tflite").exists() and not list(folder.glob(".*.tmp"))
    assert convert.convert_version(folder, strict=False) == {}  # as a training run calls it
    assert "served by Keras" in caplog.text
    assert Pipeline.load(folder, batch_size=4).runtime == "keras"
