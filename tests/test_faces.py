"""The BlazeFace detector: anchors, decoding, suppression, and faces found at the right boxes.

The real photo is Grace Hopper's official portrait (US Navy, public domain), which matplotlib
ships as sample data; the group photo, the panorama and the rotated face are made from it, so
every expected box follows from one hand-written box.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib import cbook

from moodwatch import faces
from moodwatch.detector import (
    SPECS,
    BlazeFace,
    DetectorLoadError,
    decode,
    iou,
    ssd_anchors,
    tiles_of,
    weighted_nms,
)
from moodwatch.faces import FACE_SIZE, MAX_FACES, face_crop, face_inputs

HOPPER_FACE = (168, 145, 196, 195)  # x, y, w, h: brows to chin, ear to ear, drawn by hand


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def detector() -> BlazeFace:
    return BlazeFace("short")


def box_iou(a, b) -> float:
    ax, ay, aw, ah = a
    return float(iou(np.array([ax, ay, ax + aw, ay + ah], float),
                     np.array([[b[0], b[1], b[0] + b[2], b[1] + b[3]]], float))[0])


def paste(canvas: np.ndarray, hopper: np.ndarray, x: int, y: int, side: int) -> tuple[float, ...]:
    """Paste Hopper's head (a square around her face) at x, y scaled to side; returns the face box."""
    hx, hy, hw, hh = HOPPER_FACE
    s0 = int(hw * 1.8)
    x0, y0 = hx + hw // 2 - s0 // 2, hy + hh // 2 - s0 // 2
    head = cv2.resize(hopper[y0 : y0 + s0, x0 : x0 + s0], (side, side), interpolation=cv2.INTER_AREA)
    canvas[y : y + side, x : x + side] = head
    k = side / s0
    return (x + (hx - x0) * k, y + (hy - y0) * k, hw * k, hh * k)


def test_anchors_match_every_models_outputs():
    for kind, spec in SPECS.items():
        d = BlazeFace(kind)
        assert len(ssd_anchors(spec)) == len(d.anchors)
        outputs = d._interpreter.get_output_details()
        assert {int(o["shape"][1]) for o in outputs} == {len(d.anchors)}, kind
        assert ((d.anchors > 0) & (d.anchors < 1)).all()


def test_decode_turns_an_anchor_offset_into_a_box():
    spec = SPECS["short"]
    anchors = ssd_anchors(spec)
    raw_boxes = np.zeros((len(anchors), 16), np.float32)
    raw_scores = np.full((len(anchors), 1), -20.0, np.float32)
    k = 300
    raw_boxes[k, :4] = [12.8, -6.4, 32.0, 25.6]  # centre offset and size, in input pixels
    raw_boxes[k, 4:6] = [-8.0, -8.0]  # first keypoint, relative to the anchor
    raw_scores[k] = 4.0
    boxes, kps, scores = decode(raw_boxes, raw_scores, anchors, spec.size, 0.5)
    cx, cy = anchors[k] + np.array([0.1, -0.05])
    np.testing.assert_allclose(boxes[0], [cx - 0.125, cy - 0.1, cx + 0.125, cy + 0.1], atol=1e-6)
    np.testing.assert_allclose(kps[0, 0], anchors[k] - 8.0 / 128, atol=1e-6)
    assert len(scores) == 1 and scores[0] == pytest.approx(1 / (1 + np.exp(-4.0)))


def test_weighted_suppression_merges_overlaps_and_keeps_the_rest():
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3], [0.6, 0.6, 0.8, 0.8]])
    kps = np.zeros((3, 6, 2))
    scores = np.array([0.6, 0.9, 0.7])
    out = weighted_nms(boxes, kps, scores)
    assert len(out) == 2
    merged, _, best = out[0]
    assert best == 0.9
    np.testing.assert_allclose(merged, (boxes[0] * 0.6 + boxes[1] * 0.9) / 1.5)
    np.testing.assert_allclose(out[1][0], boxes[2])


def test_tiles_for_long_photos_only():
    assert tiles_of(640, 480) == [] and tiles_of(480, 640) == []
    views = tiles_of(6000, 800)
    assert all(v.side == 800 and v.y == 0 for v in views)
    assert [(v.x, v.y) for v in tiles_of(800, 6000)] == [(v.y, v.x) for v in views]
    covered = np.zeros(6000, bool)
    for v in views:
        covered[v.x : v.x + v.side] = True
    assert covered.all()


def test_tiles_are_bounded_for_hostile_strips():
    assert tiles_of(50_000, 1) == [] and tiles_of(1, 50_000) == []
    views = tiles_of(50_000, 400)
    assert len(views) == 16 and views[0].x == 0 and views[-1].x == 50_000 - 400
    flat = np.full((1, 5000, 3), 128, np.uint8)
    assert BlazeFace("short").detect(flat) == []


def test_real_photo_face_at_the_hand_drawn_box(hopper, detector):
    found = detector.detect(hopper)
    assert len(found) == 1
    assert box_iou(found[0].box, HOPPER_FACE) > 0.7
    (rx, ry), (lx, ly) = found[0].keypoints[:2]
    x, y, w, h = HOPPER_FACE
    assert x < rx < lx < x + w and y < ry < y + h / 2 and y < ly < y + h / 2  # eyes, upper half
    fi = face_inputs(hopper)
    assert fi.crops.shape == (1, FACE_SIZE, FACE_SIZE, 1) and not fi.close_up
    assert box_iou(fi.boxes[0], HOPPER_FACE) > 0.7


def test_five_faces_in_a_group_photo(hopper, detector):
    rng = np.random.default_rng(3)
    canvas = rng.integers(90, 160, (760, 1000, 3), dtype=np.uint8)
    expected = [paste(canvas, hopper, x, y, side)
                for x, y, side in [(20, 20, 300), (340, 10, 280), (650, 40, 330), (60, 420, 240),
                                   (600, 400, 320)]]
    found = detector.detect(canvas)
    assert len(found) == 5
    for box in expected:
        assert max(box_iou(f.box, box) for f in found) > 0.6, box
    fi = face_inputs(canvas)
    assert len(fi.crops) == MAX_FACES  # the largest four: the smallest face is left out
    assert max(box_iou(b, expected[3]) for b in fi.boxes) < 0.3  # the smallest
    areas = [w * h for _, _, w, h in fi.boxes]
    assert areas == sorted(areas, reverse=True)


def test_face_off_centre_in_a_6000px_panorama(hopper, detector):
    canvas = np.full((900, 6000, 3), 120, np.uint8)
    expected = paste(canvas, hopper, 5300, 500, 360)
    # Letterboxed whole, the face would be 5 px wide: only the tiles can find it.
    found = detector.detect(canvas)
    assert len(found) == 1 and box_iou(found[0].box, expected) > 0.6


def test_rotated_face_is_found_and_levelled(hopper, detector):
    centre = (HOPPER_FACE[0] + HOPPER_FACE[2] / 2, HOPPER_FACE[1] + HOPPER_FACE[3] / 2)
    rot = cv2.warpAffine(hopper, cv2.getRotationMatrix2D(centre, 25, 1.0), hopper.shape[1::-1],
                         borderMode=cv2.BORDER_REPLICATE)
    upright, tilted = detector.detect(hopper)[0], detector.detect(rot)
    assert len(tilted) == 1
    # Rotating the image by +25 degrees (counter-clockwise) tilts the eye line by -25 degrees.
    assert tilted[0].eye_angle() - upright.eye_angle() == pytest.approx(-25, abs=6)
    gray, gray_rot = (cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in (hopper, rot))
    level = face_crop(gray_rot, tilted[0], align=True).astype(float).ravel()
    as_is = face_crop(gray_rot, tilted[0], align=False).astype(float).ravel()
    reference = face_crop(gray, upright, align=True).astype(float).ravel()
    assert np.corrcoef(level, reference)[0, 1] > np.corrcoef(as_is, reference)[0, 1] + 0.05


def test_no_face_and_thumbnail(hopper):
    flat = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    fi = face_inputs(flat)
    assert len(fi.crops) == 0 and fi.boxes == [] and not fi.close_up
    thumb = cv2.resize(hopper[140:350, 160:370], (64, 64), interpolation=cv2.INTER_AREA)
    fi = face_inputs(thumb)
    assert fi.close_up and fi.crops.shape == (1, FACE_SIZE, FACE_SIZE, 1) and fi.boxes == []


def test_crops_stay_square_at_the_edges(hopper, detector):
    gray = cv2.cvtColor(hopper, cv2.COLOR_RGB2GRAY)
    face = detector.detect(hopper)[0]
    for dx, dy in [(-face.box[0], 0), (0, -face.box[1]), (300, 400)]:
        moved = type(face)((face.box[0] + dx, face.box[1] + dy, *face.box[2:]), face.score,
                           face.keypoints + [dx, dy])
        out = face_crop(gray, moved)
        assert out.shape == (FACE_SIZE, FACE_SIZE, 1) and out.dtype == np.uint8


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer at all" * 100, None])
def test_corrupt_or_missing_model_file_is_a_clear_error(tmp_path: Path, content):
    if content is not None:
        (tmp_path / SPECS["short"].file).write_bytes(content)
    with pytest.raises(DetectorLoadError, match=r"cannot load face detector model .*short_range"):
        BlazeFace("short", tmp_path)


def test_detection_settings_name_what_decides_the_crops():
    s = faces.detection_settings()
    assert s["detector"] == "blazeface" and s["primary"] in SPECS and s["max_faces"] == MAX_FACES


def test_trainer_and_worker_see_the_same_face_crops(tmp_path, hopper, tiny_model_dir):
    """Train/serve parity for faces: the same boxes, crops and score through both paths."""
    import shutil

    from moodwatch.pipeline import FACE_MODEL_FILE, Pipeline
    from moodwatch.registry import Registry
    from tests.imagegen import write_image
    from trainer.dataset import Item, prepare_items
    from trainer.face_model import make_face_model
    from worker.inference import Classifier

    registry = Registry(tmp_path / "models")
    version = registry.new_version_dir("default-faces")
    shutil.copy2(Registry(tiny_model_dir).require_current().model_path, version.path / "model.keras")
    make_face_model().save(version.path / FACE_MODEL_FILE)
    registry.promote(version)
    path = write_image(tmp_path / "hopper.jpg", hopper)
    trained_on = prepare_items([Item(path, "happy", "0" * 64)], 50_000_000, faces=True)[0]
    assert len(trained_on.faces.crops) == 1
    classifier = Classifier(registry.require_current(), batch_size=4)
    try:
        served = classifier.classify_paths([str(path)])[0]
    finally:
        classifier.close()
    assert served.faces == trained_on.faces.relative_boxes()
    assert served.score == pytest.approx(float(Pipeline.load(version.path).scores([trained_on])[0]), abs=1e-5)
