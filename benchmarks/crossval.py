"""Cross-validate architectures on a labelled folder and print the figures.

    python benchmarks/crossval.py ../shared/datasets/web-happy-sad seed default
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from trainer.crossval import cross_validate, summarise  # noqa: E402


def main() -> None:
    data = Path(sys.argv[1])
    archs = sys.argv[2:] or ["seed", "default"]
    k = int(os.environ.get("FOLDS", "5"))
    for arch in archs:
        results = cross_validate(data, arch, k=k)
        for r in results:
            m = r.metrics
            print(f"{arch} fold {r.fold}: acc {m['accuracy']:.3f} F1 {m['f1']:.3f} "
                  f"epochs {r.epochs} ({r.epoch_s:.2f}s/epoch)", flush=True)
        s = summarise(results)
        print(f"{arch}: accuracy {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f}  "
              f"F1 {s['f1_mean']:.3f} ± {s['f1_std']:.3f}  {s['epoch_s']:.2f}s/epoch", flush=True)


if __name__ == "__main__":
    main()
