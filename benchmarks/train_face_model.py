"""Train the face model on FER-2013 happy/sad crops (train split only) and save it.

    python benchmarks/train_face_model.py ../shared/datasets/fer2013-happy-sad OUT.keras [EPOCHS]

The shipped recipe by default. The stronger recipe's options, from the environment:
WIDTHS=32,64,128,256 (a fourth block), SMOOTH=0.05 (label smoothing), ERASE=1 (random erasing),
COSINE=1 (cosine learning-rate decay over all epochs instead of halving on plateaus).
ENSEMBLE_WITH=F also prints the validation figures of the mean with another face model.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from moodwatch.modelio import load_model  # noqa: E402
from trainer.evaluation import metrics_from_scores  # noqa: E402
from trainer.face_model import load_face_folder, make_face_model  # noqa: E402
from trainer.report import roc_auc  # noqa: E402
from trainer.versioning import save_lean  # noqa: E402


def report(name: str, y: np.ndarray, scores: np.ndarray) -> None:
    m = metrics_from_scores(y, scores)
    print(f"FER validation (never trained on), {name}: accuracy {m['accuracy']:.3f} F1 {m['f1']:.3f} "
          f"ROC AUC {roc_auc(y.astype(int), scores):.3f} n {m['n']}", flush=True)


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    widths = tuple(int(w) for w in os.environ.get("WIDTHS", "32,64,128").split(","))
    cosine = os.environ.get("COSINE") == "1"
    keras.utils.set_random_seed(1337)
    x, y = load_face_folder(root / "train")
    rng = np.random.default_rng(1337)
    idx = rng.permutation(len(x))
    n_val = len(x) // 10
    val, tr = idx[:n_val], idx[n_val:]
    # Class weights: FER has 7,215 happy and 4,830 sad crops.
    w = {0: len(y) / (2 * (y == 0).sum()), 1: len(y) / (2 * (y == 1).sum())}
    train_ds = (tf.data.Dataset.from_tensor_slices((x[tr], y[tr])).shuffle(len(tr), seed=1)
                .batch(64).prefetch(2))
    val_ds = tf.data.Dataset.from_tensor_slices((x[val], y[val])).batch(256)
    steps = epochs * -(-len(tr) // 64) if cosine else None
    model = make_face_model(widths, float(os.environ.get("SMOOTH", "0")), os.environ.get("ERASE") == "1",
                            steps)
    if cosine:  # the schedule sets the pace; keep the best epoch on the held-out tenth
        callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs,
                                                   restore_best_weights=True)]
    else:
        callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
                     keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)]
    t0 = time.perf_counter()
    hist = model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=w, verbose=2,
                     callbacks=callbacks)
    n = len(hist.history["loss"])
    print(f"trained {n} epochs, {(time.perf_counter() - t0) / n:.1f}s/epoch, widths {widths}", flush=True)
    save_lean(model, out)
    xv, yv = load_face_folder(root / "validation")
    scores = model.predict(xv, batch_size=256, verbose=0).reshape(-1)
    report("this model", yv, scores)
    flipped = model.predict(xv[:, :, ::-1], batch_size=256, verbose=0).reshape(-1)
    report("with flip test-time augmentation", yv, (scores + flipped) / 2)
    if os.environ.get("ENSEMBLE_WITH"):
        other = load_model(Path(os.environ["ENSEMBLE_WITH"])).predict(xv, batch_size=256, verbose=0)
        report("mean with " + os.environ["ENSEMBLE_WITH"], yv, (scores + other.reshape(-1)) / 2)


if __name__ == "__main__":
    main()
