"""Confusion analysis: what the models confuse, and which confusions a later stage fixed.

Pure functions over labels and predicted classes (or a :class:`kit.predictions.Predictions`):
a confusion matrix has rows = true class, columns = predicted class. Unlabelled clips
(label -1) carry no truth, so they are left out and counted in the log.

Example::

    cm = confusion_of(preds)                    # (K, K) counts
    per_class_report(cm, class_names)           # precision, recall, f1, support
    most_confused(cm, class_names, top=5)       # off-diagonal pairs, largest first
    diff, table = compare(cm_adapt_bn, cm_pi4, class_names)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kit.data import read_classes
from kit.layout import ENSEMBLE, RunLayout
from kit.predictions import Predictions, load

log = logging.getLogger(__name__)

NORMALIZE = ("true", "pred", None)
ANNOTATE_MAX_CLASSES = 20  # past this many classes, numbers in the cells are unreadable


# ---------------------------------------------------------------- matrices


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """Counts ``(K, K)`` int64: ``cm[i, j]`` = clips of true class ``i`` predicted as ``j``.

    ``labels`` and ``preds`` are ``(N,)`` class ids; clips labelled -1 (unlabelled) are excluded.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    preds = np.asarray(preds, dtype=np.int64).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in length")
    keep = labels >= 0
    unlabelled = int((labels == -1).sum())
    if unlabelled:
        log.debug("confusion matrix: %d unlabelled clip(s) (label -1) excluded", unlabelled)
    bad = labels[keep & (labels >= num_classes)].tolist() + labels[labels < -1].tolist()
    if bad:
        raise ValueError(f"labels outside 0..{num_classes - 1} (or -1 for unlabelled): {sorted(set(bad))[:10]}")
    bad_preds = preds[(preds < 0) | (preds >= num_classes)]
    if bad_preds.size:
        raise ValueError(f"predicted classes outside 0..{num_classes - 1}: {sorted(set(bad_preds.tolist()))[:10]}")
    flat = labels[keep] * num_classes + preds[keep]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_of(preds: Predictions) -> np.ndarray:
    """Counts ``(K, K)`` of one predictions file (argmax of its scores against its labels)."""
    return confusion_matrix(preds.labels, preds.predicted(), preds.num_classes)


def unlabelled_count(labels) -> int:
    """How many clips carry label -1 and so are left out of every matrix."""
    return int((np.asarray(labels) == -1).sum())


def normalize(cm, how: str | None = "true") -> np.ndarray:
    """``"true"``: each row sums to 1 (recall per class); ``"pred"``: each column sums to 1
    (precision per class); ``None``: counts as float. Empty rows/columns stay 0."""
    if how not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {how!r}")
    cm = np.asarray(cm, dtype=np.float64)
    if how is None:
        return cm.copy()
    axis = 1 if how == "true" else 0
    totals = cm.sum(axis=axis, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


_normalized = normalize  # plot functions take an argument called `normalize`


# ---------------------------------------------------------------- tables


def _names(class_names, k: int) -> list[str]:
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}x{k} confusion matrix")
    return names


def per_class_report(cm, class_names=None) -> pd.DataFrame:
    """Per class: precision, recall, F1 and support (true clips), plus a ``mean`` row (macro)."""
    cm = np.asarray(cm, dtype=np.float64)
    names = _names(class_names, cm.shape[0])
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    pr = precision + recall
    f1 = np.divide(2 * precision * recall, pr, out=np.zeros_like(tp), where=pr > 0)
    table = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)},
        index=pd.Index(names, name="class"),
    )
    present = support > 0  # a class without clips has no recall to average
    table.loc["mean (macro)"] = [
        precision[present].mean() if present.any() else 0.0,
        recall[present].mean() if present.any() else 0.0,
        f1[present].mean() if present.any() else 0.0,
        int(support.sum()),
    ]
    table["support"] = table["support"].astype(np.int64)
    return table


def top1(cm) -> float:
    """Top-1 accuracy of the labelled clips counted in ``cm``."""
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


def most_confused(cm, class_names=None, *, top: int = 10) -> pd.DataFrame:
    """Off-diagonal cells with at least one clip, largest count first.

    Columns: ``true``, ``predicted``, ``true_id``, ``pred_id``, ``count``, ``share``
    (fraction of the true class's clips that went to this wrong class).
    """
    cm = np.asarray(cm, dtype=np.int64)
    names = _names(class_names, cm.shape[0])
    off = cm.copy()
    np.fill_diagonal(off, 0)
    rows = cm.sum(axis=1)
    i, j = np.nonzero(off)
    order = np.lexsort((j, i, -off[i, j]))[:top]  # count descending, then by class ids
    i, j = i[order], j[order]
    return pd.DataFrame(
        {
            "true": [names[a] for a in i],
            "predicted": [names[b] for b in j],
            "true_id": i,
            "pred_id": j,
            "count": off[i, j],
            "share": off[i, j] / np.maximum(rows[i], 1),
        }
    )


def compare(cm_a, cm_b, class_names=None, *, normalize_by: str | None = "true",
            names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, pd.DataFrame]:
    """Which cells changed from ``cm_a`` to ``cm_b`` (e.g. Adapt BN -> PI-4).

    Returns ``diff`` ``(K, K)`` = normalised b - normalised a (rows = true class by default) and a
    table of the changed cells, largest change first, with ``improved`` = the diagonal rose or an
    off-diagonal confusion fell.
    """
    cm_a, cm_b = np.asarray(cm_a), np.asarray(cm_b)
    if cm_a.shape != cm_b.shape:
        raise ValueError(f"cannot compare confusion matrices of shapes {cm_a.shape} and {cm_b.shape}")
    labels = _names(class_names, cm_a.shape[0])
    a, b = normalize(cm_a, normalize_by), normalize(cm_b, normalize_by)
    diff = b - a
    i, j = np.nonzero(~np.isclose(diff, 0.0))
    change = diff[i, j]
    improved = np.where(i == j, change > 0, change < 0)
    table = pd.DataFrame(
        {
            "true": [labels[x] for x in i],
            "predicted": [labels[y] for y in j],
            "diagonal": i == j,
            names[0]: a[i, j],
            names[1]: b[i, j],
            "change": change,
            "improved": improved,
        }
    )
    table = table.reindex(table["change"].abs().sort_values(ascending=False, kind="stable").index)
    return diff, table.reset_index(drop=True)


def cell_indices(preds: Predictions, true: int, predicted: int) -> np.ndarray:
    """Row indices ``(M,)`` of the clips of true class ``true`` predicted as ``predicted``."""
    return np.nonzero((preds.labels == true) & (preds.predicted() == predicted))[0]


def misclassified(preds: Predictions, pair: tuple[int, int], class_names=None) -> pd.DataFrame:
    """The clips in cell ``pair = (true, predicted)``, most confident mistake first.

    Columns: ``path``, ``true``, ``predicted``, ``p_true``, ``p_predicted`` (probabilities).
    """
    true, predicted = (int(x) for x in pair)
    names = _names(class_names, preds.num_classes)
    idx = cell_indices(preds, true, predicted)
    probs = preds.probs()[idx]
    table = pd.DataFrame(
        {
            "path": [preds.paths[k] for k in idx],
            "true": names[true],
            "predicted": names[predicted],
            "p_true": probs[:, true],
            "p_predicted": probs[:, predicted],
        }
    )
    return table.sort_values("p_predicted", ascending=False, kind="stable").reset_index(drop=True)


def misclassified_by_pair(preds: Predictions, class_names=None, *, top: int = 5, per_pair: int = 10) -> pd.DataFrame:
    """Misclassified clips of the ``top`` most-confused pairs (at most ``per_pair`` each), one table."""
    pairs = most_confused(confusion_of(preds), class_names, top=top)
    parts = [misclassified(preds, (r.true_id, r.pred_id), class_names).head(per_pair) for r in pairs.itertuples()]
    if not parts:
        return pd.DataFrame(columns=["path", "true", "predicted", "p_true", "p_predicted"])
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- plots


def _style(k: int) -> dict:
    # cell size, font sizes and annotation adapt to the number of classes
    annotate = k <= ANNOTATE_MAX_CLASSES
    side = float(np.clip(0.45 * k + 1.5, 4.0, 16.0))
    return {
        "annotate": annotate,
        "side": side,
        "tick": 10 if k <= 12 else 8 if k <= 30 else 6,
        "annot": 9 if k <= 12 else 7,
    }


def figsize(num_classes: int, *, panels: int = 1) -> tuple[float, float]:
    """A figure size that keeps ``num_classes`` tick labels readable, for ``panels`` side by side."""
    side = _style(num_classes)["side"]
    return (side * panels + 0.8 * (panels - 1), side * 0.85)


def plot_confusion(cm, class_names=None, *, normalize: str | None = None, ax=None, title: str | None = None,
                   cmap: str = "Blues"):
    """Seaborn heatmap of ``cm`` (rows true, columns predicted), class names on both axes.

    Numbers are written in the cells up to 20 classes; past that the colour alone carries them.
    Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    cm = np.asarray(cm)
    k = cm.shape[0]
    names = _names(class_names, k)
    style = _style(k)
    values = _normalized(cm, normalize)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize(k))
    fmt = "d" if normalize is None else ".2f"
    sns.heatmap(
        values.astype(np.int64) if normalize is None else values,
        ax=ax, cmap=cmap, square=True, cbar=True, linewidths=0.5 if k <= 30 else 0, linecolor="white",
        annot=style["annotate"], fmt=fmt, annot_kws={"fontsize": style["annot"]},
        xticklabels=names, yticklabels=names, vmin=0, vmax=1 if normalize else None,
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(axis="both", labelsize=style["tick"])
    ax.set_xticklabels(ax.get_xticklabels(), rotation=90)
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    if title:
        ax.set_title(title)
    return ax


def plot_compare(cm_a, cm_b, class_names=None, *, normalize: str | None = "true", ax=None,
                 names: tuple[str, str] = ("a", "b"), title: str | None = None):
    """Heatmap of the change from ``cm_a`` to ``cm_b`` (normalised rows by default).

    Green = better (diagonal up, confusion down), red = worse. Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    diff, _ = compare(cm_a, cm_b, class_names, normalize_by=normalize, names=names)
    k = diff.shape[0]
    labels = _names(class_names, k)
    style = _style(k)
    # sign flipped off the diagonal so that one colour always means "better"
    goodness = -diff
    np.fill_diagonal(goodness, np.diag(diff))
    if ax is None:
        _, ax = plt.subplots(figsize=figsize(k))
    lim = max(float(np.abs(diff).max()), 1e-9)
    annot = np.where(np.isclose(diff, 0), "", np.vectorize(lambda v: f"{v:+.2f}" if normalize else f"{v:+.0f}")(diff))
    sns.heatmap(
        goodness, ax=ax, cmap="RdYlGn", center=0, vmin=-lim, vmax=lim, square=True,
        linewidths=0.5 if k <= 30 else 0, linecolor="white",
        annot=annot if style["annotate"] else False, fmt="", annot_kws={"fontsize": style["annot"]},
        xticklabels=labels, yticklabels=labels, cbar_kws={"label": "green: better, red: worse"},
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(axis="both", labelsize=style["tick"])
    ax.set_xticklabels(ax.get_xticklabels(), rotation=90)
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.set_title(title or f"{names[0]} -> {names[1]} (cell values: change)")
    return ax


# ---------------------------------------------------------------- a run's predictions


def run_stages(rounds: int) -> list[str]:
    """Stages of a run in order: ``supervised``, ``adapt_bn``, ``pi1``..``pi<rounds>``."""
    return ["supervised", "adapt_bn", *(f"pi{r}" for r in range(1, rounds + 1))]


@dataclass
class RunPredictions:
    """Whatever predictions of one split a run has: ``sources[(model, stage)]``, and what is missing."""

    split: str
    class_names: list[str]
    data_root: Path
    sources: dict[tuple[str, str], Predictions] = field(default_factory=dict)
    missing: list[tuple[str, str]] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    def stages(self, model: str) -> list[str]:
        """Stages with predictions for ``model``, in pipeline order."""
        return [s for (m, s) in self.sources if m == model]

    def final(self) -> list[tuple[str, str]]:
        """The ensemble (if present), then each model at its last available stage."""
        out = [(ENSEMBLE, ENSEMBLE)] if (ENSEMBLE, ENSEMBLE) in self.sources else []
        out += [(m, self.stages(m)[-1]) for m in self.models if self.stages(m)]
        return out

    def headline(self) -> tuple[str, str]:
        """The source a report leads with: the ensemble, else the first model's last stage."""
        final = self.final()
        if not final:
            raise FileNotFoundError(f"no predictions at all for split {self.split!r}")
        return final[0]

    def summary(self) -> pd.DataFrame:
        """One row per expected (model, stage) in pipeline order: clips, unlabelled, top-1, or 'missing'."""
        rows = []
        for key in sorted([*self.sources, *self.missing], key=self._order):
            preds = self.sources.get(key)
            rows.append({
                "model": key[0], "stage": key[1],
                "clips": len(preds) if preds is not None else None,
                "unlabelled (excluded)": unlabelled_count(preds.labels) if preds is not None else None,
                "top1": top1(confusion_of(preds)) if preds is not None else None,
                "status": "ok" if preds is not None else "missing",
            })
        table = pd.DataFrame(rows, columns=["model", "stage", "clips", "unlabelled (excluded)", "top1", "status"])
        return table.astype({"clips": "Int64", "unlabelled (excluded)": "Int64", "top1": "Float64"})

    def _order(self, key):
        model, stage = key
        stages = run_stages(100) + [ENSEMBLE]
        models = [*self.models, ENSEMBLE]
        return (models.index(model) if model in models else len(models), stages.index(stage) if stage in stages else 0)

    def pick_compare(self, wanted) -> tuple[str, str] | None:
        """The two stages to compare: ``wanted`` where available, else the first and last stages
        that some model has (logged), so a run with fewer rounds still gets a comparison;
        ``None`` (logged) when the run has fewer than two stages."""
        if len(wanted) != 2:
            raise ValueError(f"compare needs two stage names, got {list(wanted)}")
        have = [s for s in run_stages(100) if any(s in self.stages(m) for m in self.models)]
        a, b = wanted
        if a in have and b in have and a != b:
            return a, b
        if len(have) < 2:
            log.warning("compare %s vs %s: split %s has predictions of %s only; nothing to compare",
                        a, b, self.split, have or "no stage")
            return None
        fa = a if a in have else have[0]
        fb = b if b in have else have[-1]
        if fa == fb:
            fa, fb = have[0], have[-1]
        fa, fb = sorted((fa, fb), key=have.index)
        log.warning("compare %s vs %s: %s missing in this run; comparing %s vs %s instead",
                    a, b, ", ".join(s for s in (a, b) if s not in have) or "a distinct pair", fa, fb)
        return fa, fb

    def comparisons(self, wanted) -> list[tuple[str, str, str]]:
        """``(model, stage_a, stage_b)`` for each model that has both stages of :meth:`pick_compare`."""
        pair = self.pick_compare(wanted)
        if pair is None:
            return []
        a, b = pair
        return [(m, a, b) for m in self.models if (m, a) in self.sources and (m, b) in self.sources]


def load_run(params, *, split: str = "val") -> RunPredictions:
    """Load every predictions file of ``split`` that the run ``params`` has made so far.

    Expected: each model at ``supervised``, ``adapt_bn``, ``pi1``..``pi<pseudo.rounds>``, and the
    ensemble. Missing files are listed in ``missing`` (logged), never an error: a run may stop early.
    """
    if split == "val" and not params.data.val:
        raise ValueError("split 'val': params.data.val is null, so this run has no labelled dark clips held out; "
                         "analyse split='test' if its labels are known")
    layout = RunLayout(params.out_dir)
    class_names = read_classes(params.data.root)
    run = RunPredictions(split=split, class_names=class_names, data_root=Path(params.data.root),
                         models=[m.label for m in params.models])
    expected = [(m, s) for m in run.models for s in run_stages(params.pseudo.rounds)] + [(ENSEMBLE, ENSEMBLE)]
    for model, stage in expected:
        path = layout.predictions(model, stage, split)
        if not path.exists():
            run.missing.append((model, stage))
            continue
        preds = load(path)
        if preds.num_classes != len(class_names):
            raise ValueError(f"{path} has {preds.num_classes} classes but {params.data.root}/classes.txt lists "
                             f"{len(class_names)}")
        run.sources[model, stage] = preds
    run.sources = dict(sorted(run.sources.items(), key=lambda kv: run._order(kv[0])))
    if run.missing:
        log.info("split %s: no predictions yet for %s", split, ", ".join(f"{m}@{s}" for m, s in run.missing))
    log.info("split %s: %d predictions file(s) loaded from %s", split, len(run.sources), layout.root)
    return run
