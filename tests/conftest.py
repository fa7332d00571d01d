"""Shared fixtures: tiny real mp4 files and a small valid data directory.

``make_video(path, frames=16, size=64, brightness=0.5, seed=0)`` writes an H.264 clip (a
textured background with a square moving left to right) whose mean pixel value is about
``brightness`` of full scale. ``tiny_data_dir`` is a data directory in the kit's contract:
``classes.txt`` (3 classes) and ``labeled.csv`` (bright, 2 clips per class), ``unlabeled.csv``
(dark, -1), ``val.csv`` (dark, labelled) and ``test.csv`` (dark, -1).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kit.video import write_mp4

TINY_CLASSES = ["drink", "jump", "wave"]

if not torch.cuda.is_available():
    # without a GPU, Triton kernels (kit.bn_stats) run in Triton's interpreter, on CPU tensors; it is
    # read when triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")


def write_video(
    path,
    *,
    frames: int = 16,
    size: int = 64,
    brightness: float = 0.5,
    seed: int = 0,
    width: int | None = None,
) -> Path:
    """Write a tiny clip ``(frames, size, width or size, 3)`` with mean value about ``brightness``."""
    rng = np.random.default_rng(seed)
    w = width or size
    texture = rng.uniform(0.5, 1.5, size=(1, size, w, 3))
    video = np.repeat(texture, frames, axis=0)
    side = max(size // 4, 2)
    for t in range(frames):
        x = int((w - side) * t / max(frames - 1, 1))
        video[t, size // 2 - side // 2 : size // 2 + side // 2, x : x + side] = 2.0
    video = video * (brightness * 255 / video.mean())
    return write_mp4(path, np.clip(video, 0, 255).astype(np.uint8), crf=18)


@pytest.fixture
def make_video(tmp_path):
    """``make_video(path, frames=16, size=64, brightness=0.5, seed=0, width=None)``; a relative
    path is taken inside ``tmp_path``. Returns the file's path."""

    def make(path, **kwargs) -> Path:
        path = Path(path)
        return write_video(path if path.is_absolute() else tmp_path / path, **kwargs)

    return make


@pytest.fixture
def tiny_data_dir(tmp_path) -> Path:
    """A valid data directory of 16-frame 64 px clips (see the module docstring)."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "classes.txt").write_text("".join(c + "\n" for c in TINY_CLASSES))
    lists = {"labeled": [], "unlabeled": [], "val": [], "test": []}
    for y in range(len(TINY_CLASSES)):
        for i in range(2):
            rel = f"labeled/{TINY_CLASSES[y]}_{i}.mp4"
            write_video(root / rel, brightness=0.45, seed=10 * y + i)
            lists["labeled"].append(f"{rel},{y}")
        for split in ("unlabeled", "val", "test"):
            rel = f"{split}/{split}_{y}.mp4"
            write_video(root / rel, brightness=0.05, seed=100 + 10 * y + len(split))
            lists[split].append(f"{rel},{y if split == 'val' else -1}")
    for split, lines in lists.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root
