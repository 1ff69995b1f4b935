"""Loss and accuracy curves as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402


def save_history_plots(history: dict[str, list[float]], folder: Path) -> list[Path]:
    written = []
    for metric in ("loss", "accuracy"):
        fig, ax = plt.subplots(figsize=(6, 4))
        epochs = range(1, len(history.get(metric, [])) + 1)
        ax.plot(epochs, history.get(metric, []), label=f"training {metric}", color="teal")
        ax.plot(epochs, history.get(f"val_{metric}", []), label=f"validation {metric}", color="orange")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.legend()
        fig.tight_layout()
        path = folder / f"{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
