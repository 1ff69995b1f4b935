"""LiteRT runs a batch as calls of a few images (moodwatch.litert.LITE_CALL_IMAGES, for the
cache), the last call padded with blank images: an image's score must not depend on the call it
was in, its neighbours, or the padding, in float32 and in dynamic-range int8 (whose activations
are quantized per image)."""

from __future__ import annotations

import numpy as np
import pytest

from moodwatch.faces import FACE_SIZE
from moodwatch.images import IMAGE_SIZE
from moodwatch.litert import DYNAMIC_INT8, FLOAT32, LITE_CALL_IMAGES, LiteModel, lite_name
from tests.test_litert_parity import SHIPPED

SHAPES = {"model.keras": (IMAGE_SIZE, IMAGE_SIZE, 3), "face.keras": (FACE_SIZE, FACE_SIZE, 1)}


def images(keras_name: str, n: int) -> np.ndarray:
    """Varied images (noise, flat, dark, bright) so that per-call quantization would show."""
    x = np.random.default_rng(7).integers(0, 256, (n, *SHAPES[keras_name]), dtype=np.uint8)
    x[1], x[2], x[3] = 0, 255, 128
    x[4] //= 8  # a dark one beside bright ones: a range shared across a call would shift it
    return x


@pytest.mark.parametrize("keras_name", sorted(SHAPES))
@pytest.mark.parametrize("quantization", [FLOAT32, DYNAMIC_INT8])
def test_an_images_score_is_its_own_whatever_the_call(keras_name: str, quantization: str) -> None:
    path = SHIPPED / lite_name(keras_name, quantization)
    assert path.is_file(), f"the shipped version lacks {path.name}"
    n = 3 * LITE_CALL_IMAGES + 1  # the last call is padded
    x = images(keras_name, n)
    served = LiteModel(path, num_threads=1)
    assert served.call_images == LITE_CALL_IMAGES
    batch = served(x)
    assert batch.shape == (n, 1)
    alone = np.concatenate([LiteModel(path, num_threads=1, call_images=1)(x[i : i + 1]) for i in range(n)])
    one_call = LiteModel(path, num_threads=1, call_images=n)(x)
    np.testing.assert_array_equal(batch, alone)
    np.testing.assert_array_equal(batch, one_call)
    # Reordered neighbours, the same scores.
    order = np.random.default_rng(1).permutation(n)
    np.testing.assert_array_equal(served(x[order]), batch[order])
    assert len(np.unique(batch.round(6))) > 1  # the images are told apart: not a constant model


def test_no_images_no_scores() -> None:
    served = LiteModel(SHIPPED / lite_name("model.keras", DYNAMIC_INT8), num_threads=1)
    assert served(np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)).shape == (0, 1)


def test_a_model_of_a_fixed_batch_is_refused_when_loaded(tmp_path) -> None:
    # The interpreter is sized once to LITE_CALL_IMAGES: a flatbuffer whose batch is fixed (one
    # converted by hand from elsewhere) cannot be, and says so at load, not at its first job.
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.uint8)], autograph=False)
    def forward(x):
        return tf.reduce_mean(tf.cast(x, tf.float32), axis=1, keepdims=True)

    path = tmp_path / "fixed.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions(
        [forward.get_concrete_function()], forward).convert())
    with pytest.raises(ValueError, match="fixed batch of 1 image"):
        LiteModel(path, num_threads=1)
