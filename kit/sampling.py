"""Which frames of a video a clip is made of: uniform (TSN-style) and dense sampling.

Uniform sampling splits the video into ``frames`` equal segments. Training takes a random frame
inside each segment; testing with ``views`` temporal views takes, for view ``k`` (0-based), the
point ``(k + 1) / (views + 1)`` of each segment. Dense sampling takes ``frames`` frames ``stride``
apart from one window: a random start in training, evenly spread (centred for one view) at test.
Videos shorter than the clip repeat frames instead of failing.

Example::

    uniform_indices(100, 4, train=False)            # array([12, 37, 62, 87])
    uniform_indices(100, 4, train=False, views=2, view=1)  # array([16, 41, 66, 91])
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "dense")


def _check(num_frames_in_video: int, frames: int, views: int, view: int) -> None:
    if num_frames_in_video < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames_in_video}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if views < 1 or not 0 <= view < views:
        raise ValueError(f"view must be in [0, views={views}), got {view}")


def uniform_indices(
    num_frames_in_video: int,
    frames: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    views: int = 1,
    view: int = 0,
) -> np.ndarray:
    """Uniform (TSN-style) frame indices: int64 array ``(frames,)``, non-decreasing.

    Segment ``i`` covers ``[i * L, (i + 1) * L)`` with ``L = num_frames_in_video / frames``.
    ``train=True``: one random point in each segment (``rng`` required for reproducibility; a fresh
    generator is used when it is None). ``train=False``: the point ``(view + 1) / (views + 1)`` of
    each segment. Frames repeat when the video has fewer frames than ``frames``.
    """
    _check(num_frames_in_video, frames, views, view)
    seg = num_frames_in_video / frames
    starts = np.arange(frames, dtype=np.float64) * seg
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        offsets = rng.random(frames) * seg
    else:
        offsets = np.full(frames, seg * (view + 1) / (views + 1))
    idx = np.floor(starts + offsets).astype(np.int64)
    return np.clip(idx, 0, num_frames_in_video - 1)


def dense_indices(
    num_frames_in_video: int,
    frames: int,
    *,
    stride: int,
    train: bool,
    rng: np.random.Generator | None = None,
    views: int = 1,
    view: int = 0,
) -> np.ndarray:
    """Dense frame indices: ``frames`` frames ``stride`` apart, int64 array ``(frames,)``.

    The window spans ``(frames - 1) * stride + 1`` frames. ``train=True``: a random start;
    ``train=False``: start at ``(view + 1) / (views + 1)`` of the free range (one view = centred).
    A video shorter than the window repeats its last frame.
    """
    _check(num_frames_in_video, frames, views, view)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    span = (frames - 1) * stride + 1
    free = max(num_frames_in_video - span, 0)
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        start = int(rng.integers(0, free + 1))
    else:
        start = int(round(free * (view + 1) / (views + 1)))
    idx = start + np.arange(frames, dtype=np.int64) * stride
    return np.minimum(idx, num_frames_in_video - 1)


def sample_indices(
    num_frames_in_video: int,
    frames: int,
    *,
    sampling: str = "uniform",
    stride: int = 2,
    train: bool,
    rng: np.random.Generator | None = None,
    views: int = 1,
    view: int = 0,
) -> np.ndarray:
    """Dispatch to :func:`uniform_indices` or :func:`dense_indices` by ``sampling`` name."""
    if sampling == "uniform":
        return uniform_indices(
            num_frames_in_video, frames, train=train, rng=rng, views=views, view=view
        )
    if sampling == "dense":
        return dense_indices(
            num_frames_in_video, frames, stride=stride, train=train, rng=rng, views=views, view=view
        )
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
