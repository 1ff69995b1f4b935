"""The dynamic-range int8 conversions (issue 24): made when a version is trained and kept only
where they label the version's own test photos as its Keras models do (accuracy within
HELD_OUT_ACCURACY_BOUND); served by default (MOODWATCH_CNN_PRECISION=dynamic-int8), float32 on
request, and never where the manifest does not vouch for the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from moodwatch import settings as settings_module
from moodwatch.litert import (
    DYNAMIC_INT8,
    FLOAT32,
    HELD_OUT_ACCURACY_BOUND,
    LITE_MANIFEST,
    PARITY_BOUND,
    QUANTIZED_PARITY_BOUND,
    served_lite_file,
)
from moodwatch.pipeline import Pipeline, prepare_bytes
from tests.test_litert_parity import SHIPPED, largest_score_difference, photos, prepared_for, tiny_version

INT8_FILES = ("model.dynamic-int8.tflite", "face.dynamic-int8.tflite", "face-closeup.dynamic-int8.tflite")


def test_the_shipped_version_serves_int8_and_float32_on_request():
    keras_pipe = Pipeline.load(SHIPPED, batch_size=4, runtime="keras")
    int8 = Pipeline.load(SHIPPED, batch_size=4)
    float32 = Pipeline.load(SHIPPED, batch_size=4, precision=FLOAT32)
    assert (int8.precision, float32.precision) == (DYNAMIC_INT8, FLOAT32)
    prepared = prepared_for(int8)
    # Every model's own scores too (whole image, faces, close-ups): int8 moves them a little.
    assert PARITY_BOUND < largest_score_difference(keras_pipe, int8, prepared) <= QUANTIZED_PARITY_BOUND
    assert largest_score_difference(keras_pipe, float32, prepared) <= PARITY_BOUND


def test_the_shipped_int8_conversion_was_checked_on_its_test_photos():
    """Recorded by trainer.convert when it was made (`python -m trainer.convert --held-out-from`):
    the 525 photos of its test split, which it never trained on."""
    check = json.loads((SHIPPED / LITE_MANIFEST).read_text())["checks"][DYNAMIC_INT8]
    params = json.loads((SHIPPED / "params.json").read_text())
    assert check["kept"] and check["photos"] == params["counts"]["test"] == 525
    assert abs(check["accuracy_litert"] - check["accuracy_keras"]) <= HELD_OUT_ACCURACY_BOUND


def test_training_checks_its_int8_conversion_on_the_test_split(tiny_model_dir):
    folder = tiny_version(tiny_model_dir)
    check = json.loads((folder / LITE_MANIFEST).read_text())["checks"][DYNAMIC_INT8]
    assert check["photos"] == json.loads((folder / "params.json").read_text())["counts"]["test"]
    faithful = abs(check["accuracy_litert"] - check["accuracy_keras"]) <= HELD_OUT_ACCURACY_BOUND
    assert check["kept"] == faithful == (folder / INT8_FILES[0]).is_file()
    assert Pipeline.load(folder).precision == (DYNAMIC_INT8 if faithful else FLOAT32)


def _held_out(n: int = 6):
    from trainer.convert import HeldOut

    return HeldOut([prepare_bytes(d) for d in photos()[:n]], np.arange(n) % 2)


def test_a_held_out_check_compares_the_served_pipelines(tiny_model_dir, tmp_path):
    """The check itself: the Keras and the int8 pipeline on the same photos, as served."""
    from trainer import convert

    folder = shutil.copytree(tiny_version(tiny_model_dir), tmp_path / "version")
    held = _held_out()
    convert.convert_version(folder, held_out=held)
    check = json.loads((folder / LITE_MANIFEST).read_text())["checks"][DYNAMIC_INT8]
    keras_scores = Pipeline.load(folder, runtime="keras").scores(held.prepared)
    assert check["photos"] == 6
    assert check["accuracy_keras"] == pytest.approx(np.mean((keras_scores >= 0.5) == (held.labels == 1)))
    assert check["largest_difference"] <= QUANTIZED_PARITY_BOUND


def test_an_int8_conversion_that_labels_test_photos_differently_is_not_kept(tiny_model_dir, tmp_path,
                                                                           monkeypatch, caplog):
    from trainer import convert

    folder = shutil.copytree(tiny_version(tiny_model_dir), tmp_path / "version")
    monkeypatch.setattr(convert, "held_out_check", lambda *a: {
        "photos": 6, "accuracy_keras": 0.5, "accuracy_litert": 0.5 - 2 * HELD_OUT_ACCURACY_BOUND,
        "largest_difference": 0.04, "labels_changed": 1})
    convert.convert_version(folder, strict=False, held_out=_held_out())
    assert not (folder / INT8_FILES[0]).exists()
    manifest = json.loads((folder / LITE_MANIFEST).read_text())
    assert manifest["checks"][DYNAMIC_INT8]["kept"] is False
    assert all(e["quantization"] == FLOAT32 for e in manifest["models"].values())
    assert Pipeline.load(folder).precision == FLOAT32
    assert "float32 serves" in caplog.text


def test_without_held_out_photos_no_int8_conversion_is_made(tiny_model_dir, tmp_path):
    from trainer import convert

    folder = shutil.copytree(tiny_version(tiny_model_dir), tmp_path / "version")
    for name in INT8_FILES:
        (folder / name).unlink(missing_ok=True)
    (folder / LITE_MANIFEST).unlink()
    entries = convert.convert_version(folder)
    assert set(entries) == {"model.tflite"} and not (folder / INT8_FILES[0]).exists()
    assert Pipeline.load(folder).precision == FLOAT32


def _kept_int8(folder, monkeypatch):
    """The version converted with a held-out check that passes, whatever the tiny model scores."""
    from trainer import convert

    monkeypatch.setattr(convert, "held_out_check", lambda *a: {
        "photos": 6, "accuracy_keras": 0.5, "accuracy_litert": 0.5, "largest_difference": 0.01,
        "labels_changed": 0})
    convert.convert_version(folder, held_out=_held_out())
    assert served_lite_file(folder, "model.keras") == folder / INT8_FILES[0]


def test_an_int8_file_from_another_version_is_not_served(tiny_model_dir, tmp_path, monkeypatch):
    folder = shutil.copytree(tiny_version(tiny_model_dir), tmp_path / "version")
    _kept_int8(folder, monkeypatch)
    shutil.copyfile(SHIPPED / INT8_FILES[0], folder / INT8_FILES[0])
    assert served_lite_file(folder, "model.keras") == folder / "model.tflite"
    assert Pipeline.load(folder).precision == FLOAT32


def test_an_int8_entry_without_a_passed_check_is_not_served(tiny_model_dir, tmp_path, monkeypatch):
    """The manifest vouches for an int8 file only together with its check's "kept"."""
    folder = shutil.copytree(tiny_version(tiny_model_dir), tmp_path / "version")
    _kept_int8(folder, monkeypatch)
    manifest = json.loads((folder / LITE_MANIFEST).read_text())
    manifest["checks"][DYNAMIC_INT8]["kept"] = False
    (folder / LITE_MANIFEST).write_text(json.dumps(manifest))
    assert served_lite_file(folder, "model.keras") == folder / "model.tflite"


def test_a_check_that_fails_to_run_leaves_the_version_to_float32(tiny_model_dir, tmp_path, monkeypatch,
                                                               caplog):
    from trainer import convert

    folder = shutil.copytree(tiny_version(tiny_model_dir), tmp_path / "version")

    def broken(*a):
        raise RuntimeError("interpreter exploded")

    monkeypatch.setattr(convert, "held_out_check", broken)
    convert.convert_version(folder, strict=False, held_out=_held_out())  # as a training run calls it
    assert not (folder / INT8_FILES[0]).exists()
    check = json.loads((folder / LITE_MANIFEST).read_text())["checks"][DYNAMIC_INT8]
    assert check["kept"] is False and "interpreter exploded" in check["error"]
    assert Pipeline.load(folder).precision == FLOAT32 and "float32 serves" in caplog.text
    with pytest.raises(RuntimeError):
        convert.convert_version(folder, held_out=_held_out())


def test_float32_precision_never_serves_int8():
    assert served_lite_file(SHIPPED, "model.keras", DYNAMIC_INT8) == SHIPPED / INT8_FILES[0]
    assert served_lite_file(SHIPPED, "model.keras", FLOAT32) == SHIPPED / "model.tflite"
    with pytest.raises(ValueError, match="unknown CNN precision"):
        served_lite_file(SHIPPED, "model.keras", "int4")


def test_an_unknown_precision_setting_is_one_error_line(tmp_path):
    from moodwatch_app.cli import main

    settings_module.get_settings.cache_clear()
    env = {"MOODWATCH_DATA_DIR": str(tmp_path / "data"), "MOODWATCH_CNN_PRECISION": "int4"}
    result = CliRunner().invoke(main, ["status"], env=env)
    settings_module.get_settings.cache_clear()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "MOODWATCH_CNN_PRECISION" in lines[0]


def test_the_convert_command_says_in_one_line_when_a_version_lists_no_test_split(tiny_model_dir, tmp_path,
                                                                                  capsys):
    from trainer import convert

    folder = shutil.copytree(tiny_version(tiny_model_dir), tmp_path / "version")
    (folder / "params.json").write_text("{}")
    assert convert.main(["--held-out-from", str(tmp_path), str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no test split" in err[0]


def test_the_held_out_check_needs_every_test_photo_of_the_version(tiny_model_dir, tmp_path):
    """A check on some of a version's test photos would not be its own: refused, saying how many."""
    from trainer import convert

    folder = tiny_version(tiny_model_dir)
    test = json.loads((folder / "params.json").read_text())["split"]["test"]
    some = tmp_path / "some"
    some.mkdir()
    shutil.copy(test[0]["path"], some / "one.png")
    with pytest.raises(convert.ConversionError, match=rf"1 of the {len(test)} test photos"):
        convert.held_out_of(folder, [some])
    assert len(convert.held_out_of(folder, [Path(test[0]["path"]).parents[1]]).prepared) == len(test)
