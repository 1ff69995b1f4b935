"""The face model: happy or sad from a 48x48 grey face crop, learned from FER-2013's crops."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
from keras import layers

from moodwatch.faces import FACE_SIZE, face_inputs
from moodwatch.images import decode_rgb
from moodwatch.vocab import LABELS


def make_face_model(widths: tuple[int, ...] = (32, 64, 128, 256), label_smoothing: float = 0.0,
                    erasing: bool = False, steps: int | None = None) -> keras.Model:
    """Double-conv blocks with batch normalisation, global pooling, a small dense head.

    widths (32, 64, 128, 256) is the shipped face CNN (trained by trainer.face_torch, which copies
    its weights in); (32, 64, 128) the previous one. Random erasing, label smoothing and a cosine
    learning-rate decay over `steps` are options of the Keras trainer (benchmarks/train_face_model.py).
    """
    inputs = keras.Input((FACE_SIZE, FACE_SIZE, 1), name="face")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.RandomFlip("horizontal")(x)
    x = layers.RandomRotation(0.05)(x)
    x = layers.RandomZoom(0.1)(x)
    x = layers.RandomTranslation(0.06, 0.06)(x)
    x = layers.RandomContrast(0.2)(x)
    if erasing:
        x = layers.RandomErasing(factor=0.5, scale=(0.02, 0.15), value_range=(0, 1))(x)
    for filters in widths:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.25)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_sad")(x)
    model = keras.Model(inputs, outputs, name="face")
    lr = keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.02) if steps else 1e-3
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
                  metrics=["accuracy"])
    return model


def close_up_crop(path: Path) -> np.ndarray:
    """A face-crop data set's image as the face model sees it (no detection: it is a face)."""
    return face_inputs(decode_rgb(path.read_bytes()), detect=False).crops[0]


def load_face_folder(folder: Path, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    files = [(p, LABELS.index(label)) for label in LABELS for p in sorted((folder / label).glob("*"))
             if p.is_file()]
    with ThreadPoolExecutor(workers) as pool:
        x = np.stack(list(pool.map(lambda f: close_up_crop(f[0]), files)))
    return x, np.array([y for _, y in files], dtype=np.float32)
