"""The challenge submission: ``VideoID,Video,ClassID,Probability``, one row per test clip.

Format, as the UG2+ 2022 track 2.2 baseline wrote it (``predict/predict_t2.py`` of
xuyu0010/ARID_UG2_2.2): a header line, then per test clip its numeric id, the video file name
relative to the test folder (its test list reads ``VideoID,Video`` / ``0,0.mp4``), the predicted
class id and a probability. The baseline wrote the whole softmax vector as a tensor repr in the
``Probability`` column; the kit writes plain numbers: the fused probability of ``ClassID``.

Choices (keyword options of :func:`write`):

- ``ids="index"`` (default): VideoID is the row index in list order, 0..N-1; ``ids="stem"``
  takes the integer file-name stem as the baseline did (``17.mp4`` -> 17).
- ``video="name"`` (default): Video is the file name (``test/17.mp4`` -> ``17.mp4``), as in the
  challenge's test list; ``video="path"`` keeps the list's relative path.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from kit.predictions import Predictions

log = logging.getLogger(__name__)

HEADER = ["VideoID", "Video", "ClassID", "Probability"]
ID_MODES = ("index", "stem")
VIDEO_MODES = ("name", "path")
PROB_FORMAT = "{:.6f}"


class SubmissionError(ValueError):
    """A submission file is malformed; the message names the file and line."""


def video_names(paths: Sequence[str], *, video: str = "name") -> list[str]:
    """The ``Video`` column for list paths: file names (``video="name"``) or the paths as they are."""
    if video not in VIDEO_MODES:
        raise ValueError(f"video must be one of {VIDEO_MODES}, got {video!r}")
    return [PurePosixPath(str(p)).name if video == "name" else str(p) for p in paths]


def video_ids(paths: Sequence[str], *, ids: str = "index") -> list[int]:
    """The ``VideoID`` column: row indices (``ids="index"``) or integer file-name stems (``"stem"``)."""
    if ids not in ID_MODES:
        raise ValueError(f"ids must be one of {ID_MODES}, got {ids!r}")
    if ids == "index":
        return list(range(len(paths)))
    out = []
    for p in paths:
        stem = PurePosixPath(str(p)).stem
        if not stem.isdigit():
            raise ValueError(f"ids='stem' needs numeric file names, got {p!r}; use ids='index'")
        out.append(int(stem))
    if len(set(out)) != len(out):
        raise ValueError("ids='stem': two clips share a file-name stem; use ids='index'")
    return out


def write(fused: Predictions, path, *, video: str = "name", ids: str = "index") -> Path:
    """Write the submission CSV for ``fused`` test predictions ``(N, K)``, rows in list order.

    ``fused`` may hold logits or probabilities (softmax is applied to logits only). Returns the path.
    """
    probs = fused.probs().astype(np.float64)
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"{fused.meta.get('file', 'predictions')}: non-finite probabilities")
    class_ids = probs.argmax(axis=1)
    top = np.clip(probs[np.arange(len(probs)), class_ids], 0.0, 1.0)
    names = video_names(fused.paths, video=video)
    if len(set(names)) != len(names):
        raise ValueError("two test clips share a file name; use video='path'")
    vids = video_ids(fused.paths, ids=ids)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HEADER)
        for i in range(len(names)):
            writer.writerow(
                [vids[i], names[i], int(class_ids[i]), PROB_FORMAT.format(float(top[i]))]
            )
    tmp.replace(path)
    log.info("wrote submission for %d test clips to %s", len(names), path)
    return path


def read(
    path,
    *,
    expect_videos: Sequence[str] | None = None,
    num_classes: int | None = None,
    video: str = "name",
    ids: str = "index",
):
    """Read and validate a submission CSV; returns a pandas DataFrame with the four columns.

    Checks: the header; four fields per line; VideoID integers, unique, and 0..N-1 in order when
    ``ids="index"``; ClassID an integer in ``0..num_classes-1`` (when given, else >= 0);
    Probability a plain number in [0, 1]; with ``expect_videos`` (the test list's paths), one row
    per clip in list order, named as :func:`write` names them (``video``, ``ids``).
    Raises :class:`SubmissionError` naming the file and line at fault.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"submission file not found: {path}")
    expected_names = video_names(expect_videos, video=video) if expect_videos is not None else None
    expected_ids = video_ids(expect_videos, ids=ids) if expect_videos is not None else None
    rows = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != HEADER:
            raise SubmissionError(
                f"{path} line 1: header must be {','.join(HEADER)}, got {header!r}"
            )
        for lineno, fields in enumerate(reader, start=2):
            where = f"{path} line {lineno}"
            if len(fields) != 4:
                raise SubmissionError(f"{where}: expected 4 fields, got {len(fields)}: {fields!r}")
            vid, name, cls, prob = fields
            try:
                vid_i, cls_i = int(vid), int(cls)
            except ValueError:
                raise SubmissionError(
                    f"{where}: VideoID and ClassID must be integers, got {vid!r}, {cls!r}"
                ) from None
            try:
                p = float(prob)
            except ValueError:
                raise SubmissionError(
                    f"{where}: Probability must be a plain number, got {prob!r}"
                ) from None
            if not (math.isfinite(p) and 0.0 <= p <= 1.0):
                raise SubmissionError(f"{where}: Probability {p} is not in [0, 1]")
            if cls_i < 0 or (num_classes is not None and cls_i >= num_classes):
                hi = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
                raise SubmissionError(f"{where}: ClassID {cls_i} out of range {hi}")
            k = len(rows)
            if ids == "index" and vid_i != k:
                raise SubmissionError(
                    f"{where}: VideoID {vid_i}, expected {k} (ids run 0..N-1 in order)"
                )
            if expected_names is not None:
                if k >= len(expected_names):
                    raise SubmissionError(
                        f"{where}: more rows than the {len(expected_names)} test clips"
                    )
                if name != expected_names[k] or vid_i != expected_ids[k]:
                    raise SubmissionError(
                        f"{where}: row ({vid_i}, {name!r}) but the test list has ({expected_ids[k]}, {expected_names[k]!r})"
                    )
            rows.append((vid_i, name, cls_i, p))
    if expected_names is not None and len(rows) != len(expected_names):
        raise SubmissionError(f"{path}: {len(rows)} rows for {len(expected_names)} test clips")
    seen: dict[int, int] = {}
    for k, (vid_i, *_rest) in enumerate(rows):
        if vid_i in seen:
            raise SubmissionError(
                f"{path} line {k + 2}: VideoID {vid_i} repeats line {seen[vid_i] + 2}"
            )
        seen[vid_i] = k
    return pd.DataFrame(rows, columns=HEADER)
