"""The face CNN trained in PyTorch scores the same once copied into the served Keras network."""

import numpy as np
import pytest
import torch

from trainer.face_torch import FaceNet, Recipe, augment, predict, to_keras, train


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48, 1), dtype=np.uint8)


def test_the_keras_copy_scores_as_the_trained_network():
    x = crops(96)
    y = (x.mean(axis=(1, 2, 3)) > 127).astype(np.float32)  # something to learn, both classes
    net = train(x, y, Recipe(widths=(8, 16), epochs=2, batch=32, lr=0.01))
    # Training moved the batch-norm statistics away from their start, so they are checked too.
    assert not torch.allclose(net.features[1].running_var, torch.ones(8))
    model = to_keras(net, (8, 16))
    held_out = crops(40, seed=1)
    keras_scores = model.predict(held_out, verbose=0).reshape(-1)
    np.testing.assert_allclose(keras_scores, predict(net, held_out), atol=1e-5)
    assert np.ptp(keras_scores) > 1e-4  # not a constant that would match anything


def test_a_network_of_other_widths_is_refused():
    with pytest.raises(ValueError, match="layer counts differ"):
        to_keras(FaceNet((8, 16)), (8, 16, 32))


def test_augmentation_keeps_shape_and_range_and_is_seeded():
    x = torch.from_numpy(crops(16)).permute(0, 3, 1, 2).float() / 255
    a = augment(x, torch.Generator().manual_seed(3), erase=1.0)
    b = augment(x, torch.Generator().manual_seed(3), erase=1.0)
    assert a.shape == x.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, x)


def test_flip_test_time_augmentation_averages_the_mirror():
    net = FaceNet((8,)).eval()
    x = crops(4)
    both = predict(net, x, flip=True)
    np.testing.assert_allclose(both, (predict(net, x) + predict(net, x[:, :, ::-1].copy())) / 2, atol=1e-6)
