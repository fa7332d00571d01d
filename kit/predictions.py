"""Prediction files: per-clip class scores saved beside the list they were made from.

One ``.npz`` per (model, list): ``paths`` (N,), ``labels`` (N,) int64 (-1 = unknown),
``scores`` (N, K) float32, and ``kind`` = ``"logits"`` or ``"probs"`` so that no reader ever
applies softmax to something that already is a probability. Every read can be checked against
the list it belongs to (same clips, same order), which the reference code never did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("logits", "probs")


class PredictionsMismatch(ValueError):
    """A predictions file does not cover the clips of the list it is read with."""


@dataclass
class Predictions:
    """Scores of one model on one list of clips.

    ``scores`` is ``(N, K)``; ``kind`` says whether the rows are logits or probabilities.
    ``meta`` holds how they were made (model, views, crops, gamma, list name, ...).
    """

    paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    kind: str = "logits"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.paths = [str(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        n = len(self.paths)
        if self.scores.ndim != 2 or self.scores.shape[0] != n or self.labels.shape != (n,):
            raise ValueError(
                f"inconsistent predictions: {n} paths, labels {self.labels.shape}, scores {self.scores.shape}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[1])

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        """Class probabilities ``(N, K)``; softmax is applied only to logits."""
        if self.kind == "probs":
            if temperature != 1.0:
                raise ValueError("temperature scaling needs logits, this file holds probabilities")
            return self.scores
        z = self.scores.astype(np.float64) / temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def predicted(self) -> np.ndarray:
        """Predicted class per clip ``(N,)``."""
        return self.scores.argmax(axis=1)

    def check_against(self, paths, *, source: str = "the list") -> None:
        """Raise :class:`PredictionsMismatch` naming the first clip that differs from ``paths``."""
        paths = [str(p) for p in paths]
        if len(paths) != len(self.paths):
            raise PredictionsMismatch(
                f"{self.meta.get('file', 'predictions')} has {len(self.paths)} clips but {source} has {len(paths)}"
            )
        for i, (a, b) in enumerate(zip(self.paths, paths, strict=True)):
            if a != b:
                raise PredictionsMismatch(
                    f"{self.meta.get('file', 'predictions')} row {i} is {a!r} but {source} has {b!r}"
                )

    def save(self, path) -> Path:
        """Write to ``path`` (``.npz``) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        meta = {k: v for k, v in self.meta.items() if k != "file"}
        np.savez(
            tmp,
            paths=np.array(self.paths, dtype=str),
            labels=self.labels,
            scores=self.scores,
            kind=np.array(self.kind),
            meta=np.array(json.dumps(meta)),
        )
        tmp.replace(path)
        return path


def load(path, *, expect_paths=None, source: str = "the list") -> Predictions:
    """Read a predictions file; with ``expect_paths`` check it covers exactly those clips in order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"predictions file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        missing = {"paths", "labels", "scores", "kind"} - set(z.files)
        if missing:
            raise ValueError(f"{path} is not a predictions file (missing {sorted(missing)})")
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        meta["file"] = str(path)
        preds = Predictions(
            paths=z["paths"].tolist(), labels=z["labels"], scores=z["scores"], kind=str(z["kind"]), meta=meta
        )
    if expect_paths is not None:
        preds.check_against(expect_paths, source=source)
    return preds
