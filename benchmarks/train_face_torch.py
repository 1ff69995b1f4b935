"""Train the face model with PyTorch (trainer.face_torch) on FER-2013's train split, save it as Keras.

    pip install -e '.[face-training]'
    python benchmarks/train_face_torch.py ../shared/datasets/fer2013-happy-sad OUT.keras [EPOCHS]

Trains on every train crop with a fixed schedule (cosine decay; the last epoch is kept, so the
validation split chooses nothing); prints the validation figures of the Keras copy, with and
without flip test-time augmentation, and checks that the copy scores as the PyTorch network does.
Options from the environment: WIDTHS=32,64,128,256, LR=0.05, WD=5e-4, SMOOTH=0.05, ERASE=0.5,
BATCH=128, SEED=1337, BF16=1 or 0 (bfloat16 autocast; default: where the CPU has bfloat16
instructions), THREADS (default: every core), EVAL_EVERY=10 (epochs between printed
validation figures; information only, nothing is chosen by them).
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.train_face_model import report  # noqa: E402
from trainer.face_model import load_face_folder  # noqa: E402
from trainer.face_torch import FaceNet, Recipe, predict, to_keras, train  # noqa: E402
from trainer.versioning import save_lean  # noqa: E402


def recipe_from_env(epochs: int) -> Recipe:
    env = os.environ.get
    return Recipe(widths=tuple(int(w) for w in env("WIDTHS", "32,64,128,256").split(",")),
                  epochs=epochs, batch=int(env("BATCH", "128")), lr=float(env("LR", "0.05")),
                  weight_decay=float(env("WD", "5e-4")), smoothing=float(env("SMOOTH", "0.05")),
                  erase=float(env("ERASE", "0.5")), seed=int(env("SEED", "1337")),
                  bf16={"1": True, "0": False}.get(env("BF16", "")))


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    recipe = recipe_from_env(int(sys.argv[3]) if len(sys.argv) > 3 else 60)
    torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count() or 2)))
    print(recipe, flush=True)
    x, y = load_face_folder(root / "train")
    xv, yv = load_face_folder(root / "validation")
    every = int(os.environ.get("EVAL_EVERY", "10"))

    def on_epoch(epoch: int, rate: float, net: FaceNet) -> None:
        if (epoch + 1) % every == 0:
            report(f"epoch {epoch + 1} ({rate:.0f} crops/s)", yv, predict(net, xv))

    t0 = time.perf_counter()
    net = train(x, y, recipe, on_epoch)
    print(f"trained {recipe.epochs} epochs in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    torch.save(net.state_dict(), out.with_suffix(".pt"))
    model = to_keras(net, recipe.widths)
    save_lean(model, out)
    scores = model.predict(xv, batch_size=256, verbose=0).reshape(-1)
    gap = float(np.abs(scores - predict(net, xv)).max())
    print(f"Keras copy against PyTorch: largest score difference {gap:.2e}", flush=True)
    report("this model", yv, scores)
    flipped = model.predict(np.ascontiguousarray(xv[:, :, ::-1]), batch_size=256, verbose=0).reshape(-1)
    report("with flip test-time augmentation", yv, (scores + flipped) / 2)


if __name__ == "__main__":
    main()
