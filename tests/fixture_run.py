"""A tiny fake run folder for the confusion tests: data dir with mp4 clips, params.yaml, predictions.

Four classes, three labelled dark clips per class plus one unlabelled clip in ``val.csv``. Two models
(``uni``, ``sf``) with predictions after ``adapt_bn`` and ``pi2`` (so ``supervised`` and ``pi1`` are
missing, as in a run that stopped or skipped them) and a fused ensemble. Who is confused with whom
is fixed by ``PREDICTED`` below, so tests can assert exact cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.config import load_params, save_params
from kit.layout import ENSEMBLE, RunLayout
from kit.predictions import Predictions
from kit.video import write_mp4

CLASSES = ["Run", "Sit", "Stand", "Walk"]
# clip i's true class; the last clip is unlabelled (-1)
LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, -1]
MODELS = ["uni", "sf"]
STAGES = ["adapt_bn", "pi2"]
# predicted class per clip for each (model, stage): Run->Walk and Sit->Stand confusions that pi2 partly fixes
PREDICTED = {
    ("uni", "adapt_bn"): [3, 3, 0, 2, 1, 2, 2, 2, 1, 3, 3, 3, 0],
    ("uni", "pi2"): [3, 0, 0, 2, 1, 1, 2, 2, 2, 3, 3, 3, 0],
    ("sf", "adapt_bn"): [3, 3, 3, 2, 2, 1, 2, 1, 2, 3, 3, 0, 1],
    ("sf", "pi2"): [3, 3, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 1],
    (ENSEMBLE, ENSEMBLE): [3, 0, 0, 2, 1, 1, 2, 2, 2, 3, 3, 3, 0],
}


@dataclass
class FixtureRun:
    params_file: Path  # outputs/<run>/params.yaml
    data_root: Path
    out_dir: Path
    paths: list[str]  # clip paths relative to data_root, in val.csv order


def clip_frames(index: int, *, size: int = 64, frames: int = 8) -> np.ndarray:
    """A dark clip ``(T, H, W, 3)`` uint8: a dim square moving right, darker than ARID's mean."""
    video = np.full((frames, size, size, 3), 6, dtype=np.uint8)
    for t in range(frames):
        x = (4 * t + 7 * index) % (size - 16)
        video[t, 20:36, x:x + 16] = (30, 18 + index, 10)
    return video


def logits_for(predicted: list[int], *, num_classes: int, seed: int) -> np.ndarray:
    """Logits ``(N, K)`` whose argmax is ``predicted``, with varied margins."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 0.3, size=(len(predicted), num_classes)).astype(np.float32)
    logits[np.arange(len(predicted)), predicted] += 2.0 + rng.uniform(0, 1, len(predicted))
    return logits


def build_fixture_run(root, *, run: str = "fixture", with_videos: bool = True) -> FixtureRun:
    """Write data + run folders under ``root`` and return where they are."""
    root = Path(root)
    data_root = root / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    (data_root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    paths = [f"val/clip{i:02d}.mp4" for i in range(len(LABELS))]
    if with_videos:
        for i, rel in enumerate(paths):
            write_mp4(data_root / rel, clip_frames(i))
    (data_root / "val.csv").write_text("".join(f"{p},{y}\n" for p, y in zip(paths, LABELS, strict=True)))

    seed_params = root / "seed_params.yaml"
    seed_params.write_text(
        f"run: {run}\n"
        f"output_root: {root / 'outputs'}\n"
        f"device: cpu\n"
        f"data:\n  root: {data_root}\n  frames: 8\n  crop: 64\n"
        f"models:\n  - {{name: uniformer_tiny, key: uni}}\n  - {{name: slowfast_tiny, key: sf}}\n"
        f"pseudo:\n  rounds: 2\n"
    )
    params = load_params(seed_params, base=seed_params)
    layout = RunLayout(params.out_dir)
    save_params(params, layout.params)
    for n, (key, predicted) in enumerate(PREDICTED.items()):
        model, stage = key
        logits = logits_for(predicted, num_classes=len(CLASSES), seed=n)
        if model == ENSEMBLE:
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            preds = Predictions(paths, LABELS, e / e.sum(axis=1, keepdims=True), kind="probs", meta={"model": model})
        else:
            preds = Predictions(paths, LABELS, logits, kind="logits", meta={"model": model, "stage": stage})
        preds.save(layout.predictions(model, stage, "val"))
    return FixtureRun(params_file=layout.params, data_root=data_root, out_dir=layout.root, paths=paths)
