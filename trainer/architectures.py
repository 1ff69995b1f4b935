"""Model factories. Each takes uint8 RGB 256x256 images; rescaling lives inside the model."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from moodwatch.vocab import IMAGE_SIZE

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)


def _compile(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=["accuracy"],
    )
    return model


def make_seed() -> keras.Model:
    """The seed tutorial's CNN, kept as the baseline to beat."""
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (16, 32, 16):
        x = layers.Conv2D(filters, 3, strides=1, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_sad")(x)
    return _compile(keras.Model(inputs, outputs, name="seed"))


def make_default(colour_blind: bool = False, size: int = IMAGE_SIZE) -> keras.Model:
    """Augmented, globally pooled and dropped-out: far fewer weights to overfit.

    Global average pooling replaces the seed's 3.7M-weight Flatten+Dense, so the model is a few
    hundred KB, and the augmentation layers run only during training. colour_blind adds random
    grayscale and saturation jitter: the curated sad photos are rich in black-and-white
    pictures, and without it "grey" becomes evidence for "sad". size below the 256 px input makes
    the network look at a smaller copy (resized inside it, so every caller still hands it the
    shared 256 px preprocessing): the convolutions cost (256 / size)^2 times less.
    """
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = inputs
    if size != IMAGE_SIZE:
        # Bilinear: a LiteRT builtin (area resizing is not); the 1.6x step aliases little.
        x = layers.Resizing(size, size, interpolation="bilinear")(x)
    x = layers.Rescaling(1.0 / 255)(x)
    if colour_blind:
        x = layers.RandomGrayscale(factor=0.3)(x)  # a third of the photos seen in black and white
        x = layers.RandomSaturation((0.25, 0.75), value_range=(0.0, 1.0))(x)  # 0.5 leaves it as it is
    x = layers.RandomFlip("horizontal")(x)
    x = layers.RandomRotation(0.06)(x)
    x = layers.RandomZoom(0.12)(x)
    x = layers.RandomContrast(0.15)(x)
    x = layers.RandomBrightness(0.1, value_range=(0.0, 1.0))(x)
    # A strided first layer: 256 px whole images carry little that 128 px does not, at 1/4 the cost.
    x = layers.Conv2D(24, 5, strides=2, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    for filters in (48, 96, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.4)(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_sad")(x)
    return _compile(keras.Model(inputs, outputs, name="default"))


ARCHITECTURES: dict[str, Callable[[], keras.Model]] = {
    "seed": make_seed,
    "default": make_default,
    "colour-blind": lambda: make_default(colour_blind=True),
    "colour-blind-160": lambda: make_default(colour_blind=True, size=160),
    "colour-blind-192": lambda: make_default(colour_blind=True, size=192),
}
DEFAULT_ARCHITECTURE = "colour-blind-160"


def make_model(name: str) -> keras.Model:
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}"
        ) from None
    return factory()
