"""Ensemble: fuse the models' predictions, fit temperatures and fusion weights on ``val``.

Fusion happens in one of two spaces, chosen once per run (``ensemble.space``):

- ``"prob"``: weighted mean of class probabilities. A file of kind ``"logits"`` goes through
  softmax (optionally with a fitted temperature) exactly once; a file of kind ``"probs"`` is used
  as it is. The reference applied softmax to probabilities, twice.
- ``"logit"``: weighted sum of logits (divided by each model's temperature). Probability files
  are refused: their logarithms are not the logits the model produced.

Weights are non-negative and normalised to sum to 1. :func:`fit_weights` fits them on the
labelled dark ``val`` split and reports the equal-weight and best-single-model baselines beside
them; it never returns weights that score worse than equal weights on the data it was fitted on.

Example::

    val = [kit.predictions.load(p) for p in val_files]
    temps = fit_temperatures(val)                     # optional
    fit = fit_weights(val, objective="nll", temperatures=temps)
    log.info("\\n%s", fit.to_frame())
    fused_test = apply_weights(fit, test_files)       # kind "probs", same clips as the test list

    fit = ensemble_weights(params.ensemble, val)      # the same, as the params ask
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kit.predictions import Predictions, PredictionsMismatch, load

log = logging.getLogger(__name__)

SPACES = ("prob", "logit")
OBJECTIVES = ("accuracy", "nll")
MAX_GRID_POINTS = 5000  # accuracy search enumerates at most this many weight vectors on the simplex
GRID_CHUNK = 64  # weight vectors scored at once (memory: chunk x N x K floats)
EPS = 1e-12  # floor for log(probability) in the NLL

PredictionsLike = Predictions | str | Path


# ---------------------------------------------------------------- helpers


def _as_predictions(preds: Sequence[PredictionsLike]) -> list[Predictions]:
    if isinstance(preds, (Predictions, str, Path)):
        raise TypeError("pass a list of predictions (or files), not a single one")
    out = [p if isinstance(p, Predictions) else load(p) for p in preds]
    if not out:
        raise ValueError("no predictions to fuse")
    return out


def model_name(pred: Predictions, index: int) -> str:
    """A short name for one model's predictions: ``meta['model']``, else the file's folder (the run
    layout keeps ``predictions/<model>/<stage>_<split>.npz``), else ``model<i>``."""
    if pred.meta.get("model"):
        return str(pred.meta["model"])
    if pred.meta.get("file"):
        return Path(pred.meta["file"]).parent.name or Path(pred.meta["file"]).stem
    return f"model{index}"


def _source(pred: Predictions, index: int) -> str:
    return pred.meta.get("file") or f"predictions #{index} ({model_name(pred, index)})"


def _check_same_clips(preds: list[Predictions]) -> None:
    first = preds[0]
    for i, p in enumerate(preds[1:], start=1):
        p.check_against(first.paths, source=_source(first, 0))
        if p.num_classes != first.num_classes:
            raise PredictionsMismatch(
                f"{_source(p, i)} has {p.num_classes} classes but {_source(first, 0)} has {first.num_classes}"
            )


def _merged_labels(preds: list[Predictions]) -> np.ndarray:
    # every file carries the list's labels; they must agree wherever two files both know one
    labels = preds[0].labels.copy()
    for i, p in enumerate(preds[1:], start=1):
        both = (labels >= 0) & (p.labels >= 0)
        bad = np.flatnonzero(both & (labels != p.labels))
        if bad.size:
            j = int(bad[0])
            raise PredictionsMismatch(
                f"{_source(p, i)} row {j} ({p.paths[j]!r}) has label {p.labels[j]} "
                f"but {_source(preds[0], 0)} has {labels[j]}"
            )
        labels = np.where(labels >= 0, labels, p.labels)
    return labels


def normalise_weights(weights, num_models: int) -> np.ndarray:
    """Check ``weights`` (None = equal) and return them as float64 ``(M,)`` summing to 1."""
    if weights is None:
        return np.full(num_models, 1.0 / num_models)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != num_models:
        raise ValueError(f"{w.shape[0]} weights for {num_models} predictions files")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError(f"weights must not all be zero, got {w.tolist()}")
    return w / w.sum()


def _temperatures(temperatures, num_models: int) -> list[float]:
    if temperatures is None:
        return [1.0] * num_models
    t = [float(x) for x in temperatures]
    if len(t) != num_models:
        raise ValueError(f"{len(t)} temperatures for {num_models} predictions files")
    if any(not math.isfinite(x) or x <= 0 for x in t):
        raise ValueError(f"temperatures must be finite and > 0, got {t}")
    return t


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _stack(preds: list[Predictions], space: str, temps: list[float]) -> np.ndarray:
    """Per-model scores in the fusion space, float64 ``(M, N, K)``."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    out = []
    for i, (p, t) in enumerate(zip(preds, temps, strict=True)):
        if space == "logit":
            if p.kind != "logits":
                raise ValueError(
                    f"logit-space fusion needs logits, but {_source(p, i)} holds {p.kind}; use space='prob'"
                )
            out.append(p.scores.astype(np.float64) / t)
        else:
            if p.kind == "probs" and t != 1.0:
                raise ValueError(
                    f"temperature {t} given for {_source(p, i)}, which holds probabilities"
                )
            # softmax only for logits: a "probs" file is used as it is
            out.append(
                _softmax(p.scores.astype(np.float64) / t)
                if p.kind == "logits"
                else p.scores.astype(np.float64)
            )
    return np.stack(out)


def _fused_probs(stack: np.ndarray, w: np.ndarray, space: str) -> np.ndarray:
    fused = np.tensordot(w, stack, axes=1)
    return _softmax(fused) if space == "logit" else fused


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], EPS)).mean())


# ---------------------------------------------------------------- fusion


def fuse(
    preds: Sequence[PredictionsLike],
    weights=None,
    *,
    space: str = "prob",
    temperatures: Sequence[float] | None = None,
) -> Predictions:
    """Fuse M models' predictions of the same clips into one.

    ``preds``: Predictions or ``.npz`` files, each ``(N, K)`` over the same clips in the same order.
    ``weights``: ``(M,)`` non-negative (None = equal), normalised to sum to 1.
    ``space="prob"`` returns the weighted mean of probabilities (kind ``"probs"``);
    ``space="logit"`` returns the weighted sum of ``logits / temperature`` (kind ``"logits"``).
    Raises :class:`kit.predictions.PredictionsMismatch` naming the first clip that differs.
    """
    preds = _as_predictions(preds)
    _check_same_clips(preds)
    w = normalise_weights(weights, len(preds))
    temps = _temperatures(temperatures, len(preds))
    fused = np.tensordot(w, _stack(preds, space, temps), axes=1)
    names = [model_name(p, i) for i, p in enumerate(preds)]
    meta = {
        "model": "ensemble",
        "fused_from": names,
        "files": [p.meta.get("file") for p in preds],
        "weights": w.tolist(),
        "space": space,
        "temperatures": temps,
    }
    log.info("fused %s in %s space with weights %s", names, space, np.round(w, 4).tolist())
    return Predictions(
        paths=preds[0].paths,
        labels=_merged_labels(preds),
        scores=fused,
        kind="probs" if space == "prob" else "logits",
        meta=meta,
    )


# ---------------------------------------------------------------- temperature


def _labelled(pred: Predictions, source: str) -> np.ndarray:
    idx = np.flatnonzero(pred.labels >= 0)
    if idx.size == 0:
        raise ValueError(f"{source} has no labelled clips to fit on")
    if pred.labels.max() >= pred.num_classes:
        raise ValueError(
            f"{source}: label {pred.labels.max()} out of range for {pred.num_classes} classes"
        )
    return idx


def fit_temperature(
    pred_val: Predictions, *, bounds: tuple[float, float] = (0.05, 20.0), iters: int = 100
) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` on the labelled clips of ``pred_val``.

    The NLL is convex in ``1/T``, so a golden-section search over ``1/T`` in ``1/bounds`` finds the
    minimum (deterministic, no gradient). Needs logits; clips with label -1 are ignored.
    """
    source = _source(pred_val, 0)
    if pred_val.kind != "logits":
        raise ValueError(f"temperature scaling needs logits, but {source} holds {pred_val.kind}")
    idx = _labelled(pred_val, source)
    z = pred_val.scores[idx].astype(np.float64)
    y = pred_val.labels[idx]

    def nll(beta: float) -> float:
        return _nll(_softmax(z * beta), y)

    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    g = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(iters):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - g) * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    beta = (lo + hi) / 2
    t = 1.0 / beta
    log.info(
        "%s: temperature %.4f (val NLL %.4f -> %.4f)",
        model_name(pred_val, 0),
        t,
        nll(1.0),
        nll(beta),
    )
    return t


def fit_temperatures(preds_val: Sequence[PredictionsLike]) -> list[float]:
    """:func:`fit_temperature` for each model; ``1.0`` for a file that already holds probabilities."""
    out = []
    for i, p in enumerate(_as_predictions(preds_val)):
        if p.kind == "probs":
            log.warning("%s holds probabilities: no temperature fitted (1.0)", _source(p, i))
            out.append(1.0)
        else:
            out.append(fit_temperature(p))
    return out


# ---------------------------------------------------------------- weights


@dataclass
class FitResult:
    """Fitted fusion weights and the baselines they are compared with (all on the fitting data).

    ``score``, ``equal_weight_score``, ``best_single`` and ``per_model`` are values of ``objective``
    (accuracy: higher is better; nll: lower is better). ``accuracy`` and ``nll`` hold both metrics
    for every row of :meth:`to_frame` (each model, ``equal``, ``ensemble`` = these weights).
    """

    names: list[str]
    weights: list[float]
    objective: str
    score: float
    equal_weight_score: float
    best_single: tuple[str, float]
    per_model: dict[str, float]
    space: str = "prob"
    temperatures: list[float] = field(default_factory=list)
    fell_back_to_equal: bool = False
    fitted: bool = True  # False: the weights were given (equal or a list), only scored here
    accuracy: dict[str, float] = field(default_factory=dict)
    nll: dict[str, float] = field(default_factory=dict)

    def to_frame(self):
        """One row per model, then ``equal`` and ``ensemble``: weight, accuracy, nll (pandas DataFrame)."""
        import pandas as pd

        weights = dict(zip(self.names, self.weights, strict=True))
        rows = []
        for name in [*self.names, "equal", "ensemble"]:
            w = weights.get(name, float("nan"))
            rows.append(
                {"model": name, "weight": w, "accuracy": self.accuracy[name], "nll": self.nll[name]}
            )
        return pd.DataFrame(rows).set_index("model")

    def to_dict(self) -> dict:
        return {
            "names": self.names,
            "weights": self.weights,
            "objective": self.objective,
            "score": self.score,
            "equal_weight_score": self.equal_weight_score,
            "best_single": list(self.best_single),
            "per_model": self.per_model,
            "space": self.space,
            "temperatures": self.temperatures,
            "fell_back_to_equal": self.fell_back_to_equal,
            "fitted": self.fitted,
            "accuracy": self.accuracy,
            "nll": self.nll,
        }


def _simplex_grid(num_models: int) -> np.ndarray:
    """All weight vectors with entries k/n summing to 1, n as fine as MAX_GRID_POINTS allows; ``(P, M)``."""
    n = 1
    while n < 100 and math.comb(n + 1 + num_models - 1, num_models - 1) <= MAX_GRID_POINTS:
        n += 1
    points = []
    # stars and bars: choose M-1 bar positions among n+M-1 slots
    for bars in itertools.combinations(range(n + num_models - 1), num_models - 1):
        edges = (-1, *bars, n + num_models - 1)
        points.append([edges[i + 1] - edges[i] - 1 for i in range(num_models)])
    return np.asarray(points, dtype=np.float64) / n


def _fit_accuracy(stack: np.ndarray, labels: np.ndarray) -> np.ndarray:
    m = stack.shape[0]
    grid = _simplex_grid(m)
    acc = np.empty(len(grid))
    for start in range(0, len(grid), GRID_CHUNK):
        # argmax of the fused scores is the same in both spaces: softmax is monotonic
        fused = np.einsum("pm,mnk->pnk", grid[start : start + GRID_CHUNK], stack)
        acc[start : start + GRID_CHUNK] = (fused.argmax(axis=2) == labels).mean(axis=1)
    # ties: the weights closest to equal, i.e. the least committed ones
    dist = ((grid - 1.0 / m) ** 2).sum(axis=1)
    order = np.lexsort((dist, -acc))
    return grid[order[0]]


def _fit_nll(stack: np.ndarray, labels: np.ndarray, space: str, *, steps: int = 200) -> np.ndarray:
    import torch

    s = torch.as_tensor(stack, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.int64)
    # softmax parameterisation keeps the weights on the simplex without constraints
    a = torch.zeros(stack.shape[0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w = torch.softmax(a, dim=0)
        fused = torch.tensordot(w, s, dims=1)
        logp = (
            torch.log_softmax(fused, dim=1) if space == "logit" else torch.log(fused.clamp_min(EPS))
        )
        loss = -logp[torch.arange(len(y)), y].mean()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(a.detach(), dim=0).numpy()


def fit_weights(
    preds_val: Sequence[PredictionsLike],
    labels=None,
    *,
    objective: str = "accuracy",
    space: str = "prob",
    temperatures: Sequence[float] | None = None,
) -> FitResult:
    """Non-negative fusion weights summing to 1, fitted on labelled predictions (``val``).

    ``objective="accuracy"`` enumerates a grid on the simplex (ties: closest to equal weights);
    ``"nll"`` minimises the NLL of the fused probabilities with LBFGS over softmax-parameterised
    weights. Both are deterministic. ``labels`` ``(N,)`` default to the files' labels; clips with
    label -1 are ignored. If the fitted weights score worse than equal weights, equal weights are
    returned (``fell_back_to_equal``). The equal-weight and best-single baselines are logged.
    """
    return _weights_result(preds_val, labels, None, objective, space, temperatures)


def score_weights(
    preds_val: Sequence[PredictionsLike],
    weights=None,
    labels=None,
    *,
    objective: str = "accuracy",
    space: str = "prob",
    temperatures: Sequence[float] | None = None,
) -> FitResult:
    """Like :func:`fit_weights` for given ``weights`` (None = equal): their score and the baselines."""
    if weights is None:
        weights = [1.0] * len(preds_val)
    return _weights_result(preds_val, labels, weights, objective, space, temperatures)


def ensemble_weights(cfg, preds_val: Sequence[PredictionsLike]) -> FitResult:
    """Weights as ``cfg`` (a :class:`kit.config.EnsembleConfig`) asks, scored on labelled ``preds_val``.

    ``cfg.temperature`` fits one temperature per model first; ``cfg.weights`` is ``"fit"``
    (:func:`fit_weights` with ``cfg.objective``), ``"equal"`` or a list, one weight per model.
    """
    temps = fit_temperatures(preds_val) if cfg.temperature else None
    if cfg.weights == "fit":
        return fit_weights(preds_val, objective=cfg.objective, space=cfg.space, temperatures=temps)
    weights = [1.0] * len(preds_val) if cfg.weights == "equal" else cfg.weights
    return score_weights(
        preds_val, weights, objective=cfg.objective, space=cfg.space, temperatures=temps
    )


def _weights_result(preds_val, labels, weights, objective, space, temperatures) -> FitResult:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    preds = _as_predictions(preds_val)
    _check_same_clips(preds)
    y = _merged_labels(preds) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.shape[0] != len(preds[0]):
        raise ValueError(f"{y.shape[0]} labels for {len(preds[0])} clips")
    idx = np.flatnonzero(y >= 0)
    if idx.size == 0:
        raise ValueError("ensemble weights need labelled clips (labels >= 0); all are -1")
    if y.max() >= preds[0].num_classes:
        raise ValueError(f"label {y.max()} out of range for {preds[0].num_classes} classes")
    y = y[idx]
    temps = _temperatures(temperatures, len(preds))
    stack = _stack(preds, space, temps)[:, idx]
    m = len(preds)
    names = [model_name(p, i) for i, p in enumerate(preds)]
    if len(set(names)) != m:
        names = [f"{n}#{i}" for i, n in enumerate(names)]

    def metrics(w):
        probs = _fused_probs(stack, w, space)
        return {"accuracy": _accuracy(probs, y), "nll": _nll(probs, y)}

    better = (lambda a, b: a > b) if objective == "accuracy" else (lambda a, b: a < b)
    equal = np.full(m, 1.0 / m)
    rows = {n: metrics(np.eye(m)[i]) for i, n in enumerate(names)}
    rows["equal"] = metrics(equal)
    fell_back = False
    if weights is not None:
        w = normalise_weights(weights, m)
    elif objective == "accuracy":
        w = _fit_accuracy(stack, y)
    else:
        w = _fit_nll(stack, y, space)
    w = normalise_weights(np.clip(w, 0.0, None), m)
    rows["ensemble"] = metrics(w)
    if weights is None and better(rows["equal"][objective], rows["ensemble"][objective]):
        fell_back = True
        log.warning(
            "fitted weights %s score %s %.4f, worse than equal weights (%.4f): using equal weights",
            np.round(w, 4).tolist(),
            objective,
            rows["ensemble"][objective],
            rows["equal"][objective],
        )
        w, rows["ensemble"] = equal, rows["equal"]
    per_model = {n: rows[n][objective] for n in names}
    best_name = names[0]
    for n in names[1:]:
        if better(per_model[n], per_model[best_name]):
            best_name = n
    result = FitResult(
        names=names,
        weights=[float(x) for x in w],
        objective=objective,
        score=rows["ensemble"][objective],
        equal_weight_score=rows["equal"][objective],
        best_single=(best_name, per_model[best_name]),
        per_model=per_model,
        space=space,
        temperatures=temps,
        fell_back_to_equal=fell_back,
        fitted=weights is None,
        accuracy={k: v["accuracy"] for k, v in rows.items()},
        nll={k: v["nll"] for k, v in rows.items()},
    )
    log.info(
        "ensemble weights (%s, %s, %s space) %s: %s %.4f | equal %.4f | best single %s %.4f",
        "fitted" if result.fitted else "given",
        objective,
        space,
        dict(zip(names, np.round(w, 4).tolist(), strict=True)),
        objective,
        result.score,
        result.equal_weight_score,
        best_name,
        per_model[best_name],
    )
    return result


def apply_weights(fit: FitResult, preds: Sequence[PredictionsLike]) -> Predictions:
    """Fuse new predictions (e.g. ``test``) with fitted weights, space and temperatures.

    ``preds`` must list the same models in the same order as at fitting time; where the files name
    their model (``meta['model']``) the names are checked.
    """
    preds = _as_predictions(preds)
    if len(preds) != len(fit.names):
        raise ValueError(
            f"{len(preds)} predictions files for weights fitted on {len(fit.names)} models"
        )
    for i, (p, name) in enumerate(zip(preds, fit.names, strict=True)):
        if p.meta.get("model") and name.split("#")[0] != model_name(p, i):
            raise ValueError(
                f"{_source(p, i)} is model {model_name(p, i)!r} but weight {i} was fitted for {name!r}"
            )
    return fuse(preds, fit.weights, space=fit.space, temperatures=fit.temperatures or None)


# ---------------------------------------------------------------- class-prior correction


def fit_class_bias(fused_val: Predictions, *, l2: float = 1e-3, steps: int = 200) -> np.ndarray:
    """Per-class log-prior correction ``b`` ``(K,)`` fitted on labelled fused ``val`` predictions.

    Corrected probabilities are ``softmax(log p + b)``: one additive bias per class, fitted by
    minimising the NLL on val (LBFGS, small L2 penalty ``l2 * |b|^2``, ``b`` centred to mean 0).
    It shifts decisions between classes that the models systematically under- or over-predict
    in the dark (e.g. Push/Run taken for Walk) — a fitted replacement for the reference's
    hand-written per-class relabelling rules. Fit it on val only; report val accuracy before and
    after on held-out data, since with few val clips per class it can overfit.
    """
    import torch

    source = _source(fused_val, 0)
    idx = _labelled(fused_val, source)
    logp = np.log(np.maximum(fused_val.probs()[idx].astype(np.float64), EPS))
    z = torch.as_tensor(logp)
    y = torch.as_tensor(fused_val.labels[idx])
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z + b, y) + l2 * (b**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    bias = b.detach().numpy()
    bias = bias - bias.mean()  # only differences between classes matter
    before = _accuracy(np.exp(logp), fused_val.labels[idx])
    after = _accuracy(_softmax(logp + bias), fused_val.labels[idx])
    log.info(
        "class bias %s: val accuracy %.4f -> %.4f (fitted on it)",
        np.round(bias, 3).tolist(),
        before,
        after,
    )
    return bias


def apply_class_bias(pred: Predictions, bias) -> Predictions:
    """``softmax(log p + bias)`` for predictions ``(N, K)`` and a bias ``(K,)`` from :func:`fit_class_bias`."""
    bias = np.asarray(bias, dtype=np.float64).reshape(-1)
    if bias.shape[0] != pred.num_classes:
        raise ValueError(f"class bias has {bias.shape[0]} entries for {pred.num_classes} classes")
    logp = np.log(np.maximum(pred.probs().astype(np.float64), EPS))
    meta = {**pred.meta, "class_bias": bias.tolist()}
    return Predictions(
        paths=pred.paths, labels=pred.labels, scores=_softmax(logp + bias), kind="probs", meta=meta
    )
