"""The face CNN trained in PyTorch scores the same once copied into the served Keras network."""

from pathlib import Path

import numpy as np
import pytest
import torch

from moodwatch.pipeline import logit
from tests.conftest import missing
from trainer.face_torch import FaceNet, Recipe, augment, native_bf16, predict, to_keras, train


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48, 1), dtype=np.uint8)


def test_the_keras_copy_scores_as_the_trained_network():
    x = crops(96)
    y = (x.mean(axis=(1, 2, 3)) > 127).astype(np.float32)  # something to learn, both classes
    net = train(x, y, Recipe(widths=(8, 16), epochs=2, batch=32, lr=0.01))
    # Batch-norm statistics and scales far from their start, so a wrong epsilon (PyTorch's 1e-5
    # against Keras's 1e-3), a swapped statistic or a transposed kernel shows in the scores.
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            c = bn.num_features
            bn.running_mean.copy_(torch.rand(c, generator=gen) * 0.3)
            bn.running_var.copy_(torch.rand(c, generator=gen) * 0.015 + 0.005)
            bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            bn.bias.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
    model = to_keras(net, (8, 16))
    # Crops from dark to bright: noise alone averages out to the same score for every crop.
    held_out = (crops(40, seed=1) * np.linspace(0.1, 1, 40)[:, None, None, None]).astype(np.uint8)
    keras_logits = logit(model.predict(held_out, verbose=0).reshape(-1))
    torch_logits = logit(predict(net, held_out))
    assert np.ptp(torch_logits) > 0.5  # scores that differ from crop to crop
    np.testing.assert_allclose(keras_logits, torch_logits, atol=1e-3 * np.ptp(torch_logits))


def test_training_refuses_too_few_crops_or_one_class():
    x = crops(40)
    with pytest.raises(ValueError, match="both classes"):
        train(x, np.zeros(40, np.float32), Recipe(widths=(8,), epochs=1, batch=32))
    with pytest.raises(ValueError, match="one batch"):
        train(x[:10], np.arange(10, dtype=np.float32) % 2, Recipe(widths=(8,), epochs=1, batch=32))


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


def test_bfloat16_autocast_only_where_the_cpu_has_bfloat16_instructions():
    # Emulated bfloat16 trained ten times slower than float32 on an AVX2 CPU: the default must
    # follow the CPU, which on Linux names its bfloat16 instructions among its flags.
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        missing("no /proc/cpuinfo on this system")
    flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
             for f in line.split(":", 1)[1].split()}
    assert native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert Recipe().bf16 is None  # follows the CPU unless asked
