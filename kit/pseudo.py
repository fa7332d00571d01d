"""Pseudo labels: per-class thresholds, selection, the selection report and pseudo lists.

One pseudo-label round (METHOD.md step 5) fuses the models' probabilities on the dark pool
(:func:`kit.ensemble.fuse`), then keeps a clip when its top probability reaches the threshold of
its predicted class. Threshold strategies (``pseudo.threshold.strategy``):

- ``fixed``: one number, or one per class (the reference's hand-set lists load as they are);
- ``precision``: per class, the lowest threshold whose pseudo-label precision on the labelled
  ``val`` split reaches ``target_precision`` with at least ``min_count`` clips kept there;
- ``quantile``: per predicted class, keep the most confident fraction q of the pool
  (class-balanced, FlexMatch-like, needs no labels); q per round from ``per_round``;
- ``none``: keep every clip (the reference's round 4).

A threshold of ``inf`` keeps nothing. Protocols (``params.protocol``): ``clean`` keeps ``val``
out of the pool, ``transductive`` lets the evaluation clips join it (:func:`build_pool`).

Example (one round; the stage driver predicts the pool and checks files against ``pool.paths``)::

    pool = build_pool(read_list(root / "unlabeled.csv", k), val=read_list(root / "val.csv", k),
                      protocol=params.protocol)
    fused = kit.ensemble.fuse(pool_prediction_files)            # kind "probs"
    truth, source = known_labels(fused, hidden=read_hidden_labels(root), protocol=pool.protocol)
    report, mask = select_round(params.pseudo.threshold, round, fused, out_dir=layout.pseudo_dir(round),
                                val=fused_val, true_labels=truth, label_source=source,
                                class_names=classes, protocol=pool.protocol)
    report.to_frame()                                           # the notebook's table
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kit.predictions import Predictions

log = logging.getLogger(__name__)

STRATEGIES = ("fixed", "precision", "quantile", "none")
PROTOCOLS = ("clean", "transductive")
KEEP_NONE = math.inf  # a class threshold that keeps nothing (top probabilities are <= 1)
HIDDEN_LABELS = "hidden_labels.csv"  # true labels of unlabelled clips (synthetic data only)


# ---------------------------------------------------------------- selection


def _top(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be (N, K), got shape {probs.shape}")
    return probs.argmax(axis=1), probs.max(axis=1)


def select(fused_probs, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """Keep a clip when its top probability reaches its predicted class's threshold.

    ``fused_probs`` ``(N, K)``, ``thresholds`` ``(K,)`` -> ``mask`` ``(N,)`` bool and pseudo
    ``labels`` ``(N,)`` int64 (the argmax, for every clip; use ``labels[mask]``).
    """
    labels, conf = _top(fused_probs)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thresholds.shape[0] != np.shape(fused_probs)[1]:
        raise ValueError(f"{thresholds.shape[0]} thresholds for {np.shape(fused_probs)[1]} classes")
    return conf >= thresholds[labels], labels.astype(np.int64)


# ---------------------------------------------------------------- thresholds


def _round_value(cfg, round: int) -> Any:
    if cfg.per_round is not None:
        if not 1 <= round <= len(cfg.per_round):
            raise ValueError(
                f"pseudo.threshold.per_round has {len(cfg.per_round)} entries, no value for round {round}"
            )
        return cfg.per_round[round - 1]
    if cfg.value is None:
        raise ValueError(
            f"pseudo.threshold: strategy {cfg.strategy!r} needs `value` or `per_round`"
        )
    return cfg.value


def _fixed(value, num_classes: int, round: int) -> np.ndarray:
    key = f"pseudo.threshold (round {round})"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        thr = np.full(num_classes, float(value))
    elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        if len(value) != num_classes:
            raise ValueError(f"{key}: {len(value)} per-class thresholds for {num_classes} classes")
        thr = np.asarray(value, dtype=np.float64)
    else:
        raise ValueError(
            f"{key}: fixed threshold must be a number or a list of {num_classes} numbers, got {value!r}"
        )
    if np.any(thr < 0) or np.any(thr > 1):
        raise ValueError(f"{key}: thresholds must lie in [0, 1], got {thr.tolist()}")
    return thr


def quantile_thresholds(fused_probs, q: float) -> np.ndarray:
    """Per predicted class, the threshold keeping the ``ceil(q * n_c)`` most confident of its ``n_c`` clips.

    ``fused_probs`` ``(N, K)`` -> ``(K,)``. Ties at the threshold may keep a few more. A class that
    no clip is predicted as (or q = 0) gets ``inf``.
    """
    if not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"quantile: the fraction kept must lie in [0, 1], got {q!r}")
    labels, conf = _top(fused_probs)
    thr = np.full(np.shape(fused_probs)[1], KEEP_NONE)
    for c in range(len(thr)):
        scores = np.sort(conf[labels == c])[::-1]
        k = math.ceil(float(q) * len(scores) - 1e-9)
        if k > 0:
            thr[c] = scores[k - 1]
    return thr


def precision_thresholds(
    val: Predictions, *, target: float = 0.9, min_count: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the lowest threshold whose pseudo-label precision on labelled ``val`` reaches ``target``.

    For class c the candidates are the top probabilities of the val clips predicted as c; a
    candidate t qualifies when, among those clips with probability >= t, at least ``min_count``
    are kept and the fraction truly of class c is >= ``target``. Returns thresholds ``(K,)``
    (``inf`` where no candidate qualifies) and the precision reached on val ``(K,)`` (nan there).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"pseudo.threshold.target_precision must lie in (0, 1], got {target}")
    if min_count < 1:
        raise ValueError(f"pseudo.threshold.min_count must be >= 1, got {min_count}")
    known = val.labels >= 0
    if not known.any():
        raise ValueError(
            f"precision thresholds need a labelled val split; {val.meta.get('file', 'val')} has no labels"
        )
    labels, conf = _top(val.probs()[known])
    truth = val.labels[known]
    k = val.num_classes
    thr, reached = np.full(k, KEEP_NONE), np.full(k, np.nan)
    for c in range(k):
        order = np.argsort(-conf[labels == c], kind="stable")
        scores = conf[labels == c][order]
        correct = (truth[labels == c][order] == c).astype(np.float64)
        if scores.size == 0:
            continue
        kept = np.arange(1, len(scores) + 1)
        precision = np.cumsum(correct) / kept
        # a candidate threshold keeps every clip up to the last one with the same score
        last_of_tie = np.r_[scores[1:] != scores[:-1], True]
        ok = last_of_tie & (kept >= min_count) & (precision >= target - 1e-12)
        if ok.any():
            i = int(np.flatnonzero(ok)[-1])  # the lowest qualifying threshold keeps the most clips
            thr[c], reached[c] = scores[i], precision[i]
    return thr, reached


def thresholds_for(
    strategy_cfg,
    round: int,
    fused_pool: Predictions | np.ndarray,
    *,
    val: Predictions | None = None,
) -> np.ndarray:
    """Per-class thresholds ``(K,)`` for pseudo-label round ``round`` (1-based).

    ``strategy_cfg`` is a :class:`kit.config.ThresholdConfig`; ``fused_pool`` the fused pool
    predictions (or their probabilities ``(N, K)``); ``val`` the fused labelled val predictions,
    needed by ``precision`` only. Classes that keep nothing get ``inf`` (a warning for ``precision``).
    """
    if round < 1:
        raise ValueError(f"pseudo-label rounds count from 1, got {round}")
    probs = fused_pool.probs() if isinstance(fused_pool, Predictions) else np.asarray(fused_pool)
    k = probs.shape[1]
    strategy = strategy_cfg.strategy
    if strategy == "none":
        return np.zeros(k)
    if strategy == "fixed":
        return _fixed(_round_value(strategy_cfg, round), k, round)
    if strategy == "quantile":
        q = _round_value(strategy_cfg, round)
        if isinstance(q, bool) or not isinstance(q, (int, float)):
            raise ValueError(
                f"pseudo.threshold (round {round}): quantile needs one fraction, got {q!r}"
            )
        return quantile_thresholds(probs, float(q))
    if strategy == "precision":
        if val is None:
            raise ValueError(
                "pseudo.threshold.strategy 'precision' needs the fused predictions of the labelled val split"
            )
        if val.num_classes != k:
            raise ValueError(f"val predictions have {val.num_classes} classes, the pool {k}")
        thr, reached = precision_thresholds(
            val, target=strategy_cfg.target_precision, min_count=strategy_cfg.min_count
        )
        never = np.flatnonzero(~np.isfinite(thr))
        if never.size:
            log.warning(
                "round %d: classes %s never reach precision %.2f on val (min count %d): nothing kept for them",
                round,
                never.tolist(),
                strategy_cfg.target_precision,
                strategy_cfg.min_count,
            )
        return thr
    raise ValueError(f"pseudo.threshold.strategy must be one of {STRATEGIES}, got {strategy!r}")


# ---------------------------------------------------------------- report


@dataclass
class SelectionReport:
    """What one pseudo-label round kept, per class.

    Arrays are ``(K,)``: ``threshold``; ``pool`` clips predicted as the class; ``kept`` of them;
    ``labelled`` kept clips whose true label is known and ``correct`` among those (pseudo-label
    accuracy = correct / labelled); ``pool_labelled``/``pool_correct`` the same before
    thresholding; ``val_kept``/``val_correct`` the same thresholds applied to labelled ``val``.
    """

    class_names: list[str]
    threshold: np.ndarray
    pool: np.ndarray
    kept: np.ndarray
    labelled: np.ndarray
    correct: np.ndarray
    pool_labelled: np.ndarray
    pool_correct: np.ndarray
    val_kept: np.ndarray | None = None
    val_correct: np.ndarray | None = None
    round: int | None = None
    protocol: str | None = None
    strategy: str | None = None
    label_source: str | None = None
    meta: dict = field(default_factory=dict)

    @staticmethod
    def _ratio(a, b):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return np.divide(a, b, out=np.full(a.shape, np.nan), where=b > 0)

    @property
    def accuracy(self) -> np.ndarray:
        """Pseudo-label accuracy per class ``(K,)`` among kept clips with known labels (nan if none)."""
        return self._ratio(self.correct, self.labelled)

    @property
    def total_kept(self) -> int:
        return int(self.kept.sum())

    @property
    def total_pool(self) -> int:
        return int(self.pool.sum())

    @property
    def total_accuracy(self) -> float:
        return float(self._ratio(self.correct.sum(), self.labelled.sum()))

    def to_frame(self):
        """One row per class plus ``all`` (pandas DataFrame)."""
        import pandas as pd

        cols = {
            "threshold": self.threshold,
            "pool": self.pool,
            "kept": self.kept,
            "kept_frac": self._ratio(self.kept, self.pool),
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "pool_accuracy": self._ratio(self.pool_correct, self.pool_labelled),
        }
        if self.val_kept is not None:
            cols["val_kept"] = self.val_kept
            cols["val_accuracy"] = self._ratio(self.val_correct, self.val_kept)
        frame = pd.DataFrame(cols, index=pd.Index(self.class_names, name="class"))
        total = {
            "threshold": np.nan,
            "pool": self.total_pool,
            "kept": self.total_kept,
            "kept_frac": float(self._ratio(self.total_kept, self.total_pool)),
            "labelled": int(self.labelled.sum()),
            "accuracy": self.total_accuracy,
            "pool_accuracy": float(self._ratio(self.pool_correct.sum(), self.pool_labelled.sum())),
        }
        if self.val_kept is not None:
            total["val_kept"] = int(self.val_kept.sum())
            total["val_accuracy"] = float(self._ratio(self.val_correct.sum(), self.val_kept.sum()))
        frame.loc["all"] = total
        return frame

    def to_dict(self) -> dict:
        """JSON-ready: thresholds that keep nothing are written as ``null``, unknown accuracies too."""

        def clean(a):
            return [
                None if (isinstance(x, float) and not math.isfinite(x)) else x
                for x in np.asarray(a).tolist()
            ]

        out = {
            "round": self.round,
            "protocol": self.protocol,
            "strategy": self.strategy,
            "label_source": self.label_source,
            "classes": self.class_names,
            "threshold": clean(self.threshold.astype(np.float64)),
            "pool": self.pool.tolist(),
            "kept": self.kept.tolist(),
            "labelled": self.labelled.tolist(),
            "correct": self.correct.tolist(),
            "accuracy": clean(self.accuracy),
            "pool_labelled": self.pool_labelled.tolist(),
            "pool_correct": self.pool_correct.tolist(),
            "total_pool": self.total_pool,
            "total_kept": self.total_kept,
            "total_accuracy": clean([self.total_accuracy])[0],
            "meta": self.meta,
        }
        if self.val_kept is not None:
            out["val_kept"] = self.val_kept.tolist()
            out["val_correct"] = self.val_correct.tolist()
        return out


def selection_report(
    fused_pool: Predictions,
    thresholds,
    *,
    true_labels=None,
    label_source: str | None = None,
    val: Predictions | None = None,
    class_names: Sequence[str] | None = None,
    round: int | None = None,
    protocol: str | None = None,
    strategy: str | None = None,
) -> SelectionReport:
    """Count, per class, what :func:`select` keeps from ``fused_pool`` with ``thresholds`` ``(K,)``.

    ``true_labels`` ``(N,)`` (-1 = unknown) score the pseudo labels; default: the pool's own labels
    (:func:`known_labels` combines them with hidden labels). ``val`` (fused, labelled) adds the
    kept count and accuracy of the same thresholds on val: the honest estimate under ``clean``.
    """
    probs = fused_pool.probs()
    k = probs.shape[1]
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    mask, pseudo = select(probs, thresholds)
    truth = (
        fused_pool.labels
        if true_labels is None
        else np.asarray(true_labels, dtype=np.int64).reshape(-1)
    )
    if truth.shape[0] != len(fused_pool):
        raise ValueError(f"{truth.shape[0]} true labels for {len(fused_pool)} pool clips")
    known = truth >= 0
    hit = known & (truth == pseudo)

    def per_class(selected):
        return np.bincount(pseudo[selected], minlength=k)

    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    report = SelectionReport(
        class_names=names,
        threshold=thresholds,
        pool=per_class(np.ones(len(pseudo), bool)),
        kept=per_class(mask),
        labelled=per_class(mask & known),
        correct=per_class(mask & hit),
        pool_labelled=per_class(known),
        pool_correct=per_class(hit),
        round=round,
        protocol=protocol,
        strategy=strategy,
        label_source=label_source if known.any() else None,
    )
    if val is not None:
        vk = val.labels >= 0
        vmask, vpseudo = select(val.probs()[vk], thresholds)
        report.val_kept = np.bincount(vpseudo[vmask], minlength=k)
        report.val_correct = np.bincount(vpseudo[vmask & (val.labels[vk] == vpseudo)], minlength=k)
    log.info(
        "round %s (%s protocol, %s thresholds): kept %d of %d pool clips%s",
        round,
        protocol,
        strategy,
        report.total_kept,
        report.total_pool,
        f", pseudo-label accuracy {report.total_accuracy:.3f} on {int(report.labelled.sum())} with known labels"
        f" ({report.label_source})"
        if report.labelled.sum()
        else "",
    )
    return report


# ---------------------------------------------------------------- labels and lists


def read_hidden_labels(data_dir) -> dict[str, int] | None:
    """True labels of unlabelled clips from ``<data_dir>/hidden_labels.csv`` (``path,label``), or None.

    The synthetic data generator (``kit.synth``) writes this file so that pseudo-label accuracy
    can be measured; real data sets have none.
    """
    from kit.data import read_list

    path = Path(data_dir) / HIDDEN_LABELS
    if not path.exists():
        return None
    hidden = read_list(path, None)
    return dict(zip(hidden.paths, hidden.labels.tolist(), strict=True))


def known_labels(
    pool: Predictions, *, hidden: dict[str, int] | None = None, protocol: str = "clean"
) -> tuple[np.ndarray, str | None]:
    """True labels ``(N,)`` of the pool clips where known (-1 elsewhere) and where they came from.

    Sources: ``hidden`` (see :func:`read_hidden_labels`) and the pool's own list labels (under
    ``transductive`` these are the evaluation clips that joined the pool). They are for the report
    only; training uses pseudo labels.
    """
    labels = pool.labels.copy()
    sources = []
    if (labels >= 0).any():
        sources.append(
            "pool lists" if protocol == "clean" else "evaluation clips in the pool (transductive)"
        )
    if hidden:
        extra = np.array([hidden.get(p, -1) for p in pool.paths], dtype=np.int64)
        clash = np.flatnonzero((labels >= 0) & (extra >= 0) & (labels != extra))
        if clash.size:
            i = int(clash[0])
            raise ValueError(
                f"{pool.paths[i]!r}: list label {labels[i]} but {HIDDEN_LABELS} says {extra[i]}"
            )
        if (extra >= 0).any():
            sources.append(HIDDEN_LABELS)
        labels = np.where(labels >= 0, labels, extra)
    return labels, (" + ".join(sources) or None)


def write_pseudo_list(path, paths: Sequence[str], labels, probs) -> Path:
    """Write a pseudo list ``path,label,prob0,...,probK-1`` (no header, plain numbers).

    ``paths`` ``(N,)``, ``labels`` ``(N,)`` pseudo labels, ``probs`` ``(N, K)`` fused probabilities.
    The data layer writes it (:func:`kit.data.write_list`) and reads it back (``read_list``).
    """
    from kit.data import write_list

    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or not (len(paths) == labels.shape[0] == probs.shape[0]):
        raise ValueError(
            f"pseudo list {path}: {len(paths)} paths, labels {labels.shape}, probs {probs.shape} do not match"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"pseudo list {path}: labels must lie in 0..{probs.shape[1] - 1}")
    out = write_list(path, [str(p) for p in paths], labels, probs=probs)
    log.info("wrote %d pseudo-labelled clips to %s", len(paths), out)
    return out


# ---------------------------------------------------------------- protocols


@dataclass
class Pool:
    """The clips a round predicts and pseudo-labels.

    ``rows`` are ``(path, label)`` with the lists' labels (-1 = unknown; known ones only score
    the report), ``sources`` the list each row came from, ``protocol`` which protocol built it.
    """

    rows: list[tuple[str, int]]
    sources: list[str]
    protocol: str
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.rows]

    @property
    def labels(self) -> np.ndarray:
        return np.array([y for _, y in self.rows], dtype=np.int64)

    def as_list(self):
        """The pool as a :class:`kit.data.VideoList` (labels for the report only, never for training)."""
        from kit.data import VideoList

        return VideoList(paths=self.paths, labels=self.labels, source=f"pool ({self.protocol})")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sources:
            out[s] = out.get(s, 0) + 1
        return out

    def describe(self) -> str:
        parts = ", ".join(f"{n} from {s}" for s, n in self.counts().items())
        dropped = "".join(f"; {n} {s} clips left out" for s, n in self.dropped.items() if n)
        return f"{self.protocol} protocol: {len(self.rows)} pool clips ({parts}){dropped}"


def _rows(list_like) -> list[tuple[str, int]]:
    # a kit.data.VideoList (columns) or rows (path, label, ...) / objects with .path and .label
    if list_like is None:
        return []
    if hasattr(list_like, "paths") and hasattr(list_like, "labels"):
        return [(str(p), int(y)) for p, y in zip(list_like.paths, list_like.labels, strict=True)]
    return [_row(r) for r in list_like]


def _row(row) -> tuple[str, int]:
    if hasattr(row, "path"):
        return str(row.path), int(getattr(row, "label", -1))
    return str(row[0]), int(row[1]) if len(row) > 1 else -1


def build_pool(unlabeled, *, val=None, test=None, protocol: str = "clean") -> Pool:
    """The pseudo-label (and adaptation) pool from the data directory's list rows.

    ``unlabeled``, ``val``, ``test``: :class:`kit.data.VideoList` s, or rows ``(path, label, ...)``. ``clean``: the unlabelled pool only, minus any clip that is also in ``val`` or
    ``test`` (evaluation clips never enter adaptation or pseudo-labelling). ``transductive``: the
    unlabelled pool plus the ``val`` and ``test`` clips, as in the challenge. Duplicates are kept once.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    named = [("unlabeled", _rows(unlabeled)), ("val", _rows(val)), ("test", _rows(test))]
    held_out = set()
    if protocol == "clean":
        held_out = {path for _, rows in named[1:] for path, _ in rows}
        named = named[:1]
    rows, sources, seen = [], [], set()
    dropped = {"evaluation": 0, "duplicate": 0}
    for name, list_rows in named:
        for path, label in list_rows:
            if path in held_out:
                dropped["evaluation"] += 1
                continue
            if path in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(path)
            rows.append((path, label))
            sources.append(name)
    if dropped["evaluation"]:
        log.warning(
            "clean protocol: %d clips of the unlabelled list are also evaluation clips: left out of the pool",
            dropped["evaluation"],
        )
    pool = Pool(rows=rows, sources=sources, protocol=protocol, dropped=dropped)
    log.info("%s", pool.describe())
    return pool


# ---------------------------------------------------------------- one round


def select_round(
    strategy_cfg,
    round: int,
    fused_pool: Predictions,
    *,
    out_dir=None,
    val: Predictions | None = None,
    true_labels=None,
    label_source: str | None = None,
    class_names: Sequence[str] | None = None,
    protocol: str | None = None,
) -> tuple[SelectionReport, np.ndarray]:
    """Thresholds, selection and report of one round; with ``out_dir`` also write its files.

    Files: ``pseudo.csv`` (the kept clips, :func:`write_pseudo_list`), ``selection.json``
    (:meth:`SelectionReport.to_dict`) and ``selection.csv`` (:meth:`SelectionReport.to_frame`).
    Returns the report and the keep mask ``(N,)`` over ``fused_pool``.
    """
    import json

    thresholds = thresholds_for(strategy_cfg, round, fused_pool, val=val)
    probs = fused_pool.probs()
    mask, labels = select(probs, thresholds)
    report = selection_report(
        fused_pool,
        thresholds,
        true_labels=true_labels,
        label_source=label_source,
        val=val,
        class_names=class_names,
        round=round,
        protocol=protocol,
        strategy=strategy_cfg.strategy,
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        keep = np.flatnonzero(mask)
        write_pseudo_list(
            out_dir / "pseudo.csv", [fused_pool.paths[i] for i in keep], labels[keep], probs[keep]
        )
        (out_dir / "selection.json").write_text(json.dumps(report.to_dict(), indent=1))
        report.to_frame().to_csv(out_dir / "selection.csv")
    return report, mask
