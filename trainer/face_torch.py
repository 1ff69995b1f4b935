"""The face CNN trained in PyTorch, then copied into :func:`make_face_model`'s Keras network.

Why a second framework: on this project's 2-core machines (Xeon with AMX) PyTorch's bfloat16
autocast trains the four-block face CNN about 2.6 times as fast as Keras on TensorFlow (about 530
against 205 crops/s with augmentation, 728 against 239 without; the same layers, batch 128),
which is the difference between a long schedule fitting in a session or not. What is served,
saved and fine-tuned nightly stays the Keras network: :func:`to_keras` copies the weights layer
for layer and a test checks that both give the same scores. PyTorch is needed only to train the
face model from FER-2013 (the ``face-training`` extra), never by the service.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.face_model import make_face_model

BN_EPS = 1e-3  # Keras's BatchNormalization default; PyTorch's is 1e-5


@dataclass
class Recipe:
    widths: tuple[int, ...] = (32, 64, 128, 256)
    epochs: int = 60
    batch: int = 128
    lr: float = 0.05  # SGD with Nesterov momentum, cosine decay to zero after a short warm-up
    weight_decay: float = 5e-4
    smoothing: float = 0.05
    erase: float = 0.5  # probability of one random erased rectangle per crop
    seed: int = 1337
    # bfloat16 autocast: None = where the CPU has bfloat16 instructions (AVX-512 BF16, AMX). On a
    # CPU without them PyTorch emulates it, ten times slower than float32 (measured on an AVX2 EPYC).
    bf16: bool | None = None


def native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (PyTorch has no public name for it)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out, eps=BN_EPS),
            nn.ReLU(inplace=True)]


class FaceNet(nn.Module):
    """make_face_model's layers in the same order, without the augmentation layers."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for f in widths:
            layers += conv_bn(c, f) + conv_bn(f, f) + [nn.MaxPool2d(2), nn.Dropout(0.25)]
            c = f
        self.features = nn.Sequential(*layers)
        self.dense = nn.Linear(c, 128)
        self.drop = nn.Dropout(0.4)
        self.out = nn.Linear(128, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, 1, 48, 48) in [0, 1]; returns the logit of P(sad)."""
        h = self.features(x).mean((2, 3))
        return self.out(self.drop(F.relu(self.dense(h)))).squeeze(1)


def augment(x: torch.Tensor, gen: torch.Generator, erase: float) -> torch.Tensor:
    """Flips, small rotations, zooms and shifts in one warp, contrast and brightness, erasing."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    angle = uniform(-0.18, 0.18)  # radians, about 10 degrees
    scale = uniform(0.9, 1.1)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, uniform(-0.12, 0.12)], 1),
                         torch.stack([sin * flip, cos, uniform(-0.12, 0.12)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.75, 1.25).view(n, 1, 1, 1) + mean + uniform(-0.1, 0.1).view(n, 1, 1, 1)
    if erase > 0:
        size = x.shape[-1]
        area = uniform(0.02, 0.15) * size * size
        aspect = torch.exp(uniform(math.log(0.3), math.log(3.3)))
        h = (area * aspect).sqrt().clamp(1, size)
        w = (area / aspect).sqrt().clamp(1, size)
        top, left = uniform(0, 1) * (size - h), uniform(0, 1) * (size - w)
        rows = torch.arange(size).view(1, size, 1)
        cols = torch.arange(size).view(1, 1, size)
        box = ((rows >= top.view(n, 1, 1)) & (rows < (top + h).view(n, 1, 1))
               & (cols >= left.view(n, 1, 1)) & (cols < (left + w).view(n, 1, 1)))
        box &= (torch.rand(n, generator=gen) < erase).view(n, 1, 1)
        x = torch.where(box[:, None], torch.rand(x.shape, generator=gen), x)
    return x.clamp(0, 1)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """(n, 48, 48, 1) uint8 crops as the network's (n, 1, 48, 48) floats in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float() / 255


@torch.no_grad()
def predict(net: FaceNet, x: np.ndarray, flip: bool = False) -> np.ndarray:
    """P(sad) for uint8 crops, in float32 (as served); flip also averages the mirrored crops."""
    net.eval()
    t = to_tensor(x)
    p = torch.sigmoid(torch.cat([net(t[i:i + 512]) for i in range(0, len(t), 512)]))
    if flip:
        p = (p + torch.from_numpy(predict(net, np.ascontiguousarray(x[:, :, ::-1])))) / 2
    return p.numpy()


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning rate's factor: a linear warm-up, then a cosine decay to zero at total."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(x: np.ndarray, y: np.ndarray, recipe: Recipe,
          on_epoch: Callable[[int, float, FaceNet], None] | None = None) -> FaceNet:
    """Train on uint8 crops x (n, 48, 48, 1) and labels y (1 = sad); class-weighted, as Keras was."""
    classes = np.unique(y).size
    if len(x) < recipe.batch or classes < 2:
        raise ValueError(f"need at least one batch ({recipe.batch}) of crops of both classes, "
                         f"got {len(x)} crops of {classes} class(es)")
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    net = FaceNet(recipe.widths).to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in net.parameters():  # no weight decay on batch-norm scales and biases
        (no_decay if p.ndim == 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=recipe.lr, momentum=0.9, nesterov=True)
    xt, yt = to_tensor(x), torch.from_numpy(y.astype(np.float32))
    weights = torch.tensor([len(y) / (2 * (y == 0).sum()), len(y) / (2 * (y == 1).sum())],
                           dtype=torch.float32)
    steps_per_epoch = len(xt) // recipe.batch
    total, warmup = recipe.epochs * steps_per_epoch, 2 * steps_per_epoch
    step = 0
    bf16 = native_bf16() if recipe.bf16 is None else recipe.bf16
    for epoch in range(recipe.epochs):
        net.train()
        order = torch.randperm(len(xt), generator=gen)
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        for b in range(steps_per_epoch):
            idx = order[b * recipe.batch:(b + 1) * recipe.batch]
            xb = augment(xt[idx], gen, recipe.erase).contiguous(memory_format=torch.channels_last)
            target = yt[idx] * (1 - recipe.smoothing) + 0.5 * recipe.smoothing
            w = weights[yt[idx].long()]
            for group in opt.param_groups:
                group["lr"] = recipe.lr * warmup_cosine(step, warmup, total)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(xb)
            loss = (F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none") * w).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{recipe.epochs} loss {loss_sum / seen:.4f}", flush=True)
        if on_epoch is not None:
            on_epoch(epoch, seen / (time.perf_counter() - t0), net)
    return net.eval()


def to_keras(net: FaceNet, widths: tuple[int, ...]) -> keras.Model:
    """make_face_model's network holding net's weights (its augmentation layers have none)."""
    model = make_face_model(widths)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    denses = [net.dense, net.out]
    sources: dict[type, list[nn.Module]] = {keras.layers.Conv2D: convs,
                                            keras.layers.BatchNormalization: norms,
                                            keras.layers.Dense: denses}
    targets = {kind: [layer for layer in model.layers if type(layer) is kind] for kind in sources}
    counts = {kind.__name__: (len(targets[kind]), len(sources[kind])) for kind in sources}
    if any(k != t for k, t in counts.values()):
        raise ValueError(f"layer counts differ (Keras, PyTorch): {counts}")
    for kind, layers in targets.items():
        for layer, src in zip(layers, sources[kind], strict=True):
            layer.set_weights(_keras_weights(src))
    return model


def _keras_weights(m: nn.Module) -> list[np.ndarray]:
    def a(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    if isinstance(m, nn.Conv2d):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [a(m.weight).transpose(2, 3, 1, 0)]
    if isinstance(m, nn.BatchNorm2d):
        return [a(m.weight), a(m.bias), a(m.running_mean), a(m.running_var)]
    return [a(m.weight).T, a(m.bias)]  # Linear: (out, in) -> (in, out)
