"""Plots the notebooks show: frame strips (with and without gamma) and training curves."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def frame_strip(root, rel_paths, *, gamma: float | None = None, frames: int = 6, titles=None, size: float = 1.4):
    """A grid of ``frames`` evenly spaced frames (columns) for each clip (rows); ``gamma`` brightens.

    Shows what the model sees: dark clips are nearly black until gamma 0.25 lifts them.
    """
    import matplotlib.pyplot as plt

    from kit.transforms import apply_gamma
    from kit.video import num_frames, read_frames

    rel_paths = list(rel_paths)
    fig, axes = plt.subplots(
        len(rel_paths), frames, figsize=(size * frames, size * len(rel_paths)), squeeze=False
    )
    for row, rel in enumerate(rel_paths):
        path = Path(root) / rel
        n = num_frames(path)
        idx = np.linspace(0, n - 1, frames).round().astype(int)
        clip = read_frames(path, idx)
        if gamma is not None:
            clip = apply_gamma(clip, gamma)
        for col in range(frames):
            ax = axes[row, col]
            ax.imshow(clip[col])
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(titles[row] if titles else Path(rel).stem, fontsize=8)
    fig.suptitle("gamma off" if gamma is None else f"gamma {gamma}", fontsize=10)
    fig.tight_layout()
    return fig


def read_metrics(path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` written by :func:`kit.engine.fit`."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_curves(path, *, title: str = ""):
    """Loss and top-1 per epoch from a ``metrics.jsonl``."""
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    if rows:
        for ax, keys in ((ax1, ("loss", "pseudo_loss")), (ax2, ("top1", "val_top1", "train_top1"))):
            for key in keys:
                have = [r for r in rows if r.get(key) is not None]  # val may run every few epochs only
                if have:
                    ax.plot([r["epoch"] for r in have], [r[key] for r in have], marker=".", label=key)
        ax1.legend()
        ax2.legend()
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax2.set_xlabel("epoch")
    ax2.set_title("top-1 on val")
    fig.suptitle(title)
    fig.tight_layout()
    return fig

