"""The training loop: ``train_one_epoch``, ``evaluate``, ``predict`` and ``fit``.

Shaped after torchvision's video classification reference: one flat loop, a plain-dict
checkpoint (``checkpoint.pth`` each epoch, ``best.pth`` on improvement), resume with one flag.
The same code runs in one process and under ``torchrun --nproc_per_node N`` (DDP; rank 0 writes
files; metrics are reduced over processes).

Batches follow the kit.data contract: ``{"video": (B, C, T, H, W) or (B, S, C, T, H, W),
"label": (B,), "index": (B,), ["probs": (B, K)], "bad": [paths]}``; ``video`` is None when every
clip of the batch was skipped.

Semi-supervised epochs (pseudo-label rounds): an epoch runs ``max(len(train_loader),
len(pseudo_loader))`` iterations and restarts the shorter loader when it runs out, so every
labelled and every pseudo-labelled clip is seen at least once per epoch. ``pseudo_mode=
"alternate"`` (the reference) takes one optimizer step on a labelled batch and one on a
pseudo-labelled batch per iteration; ``"mixed"`` concatenates the two batches into one step.
The learning-rate schedule advances once per iteration in both modes.

Files written in ``out_dir`` (rank 0): ``checkpoint.pth``, ``best.pth``, ``metrics.jsonl`` (one
JSON line per epoch) and ``bad_videos.txt`` (clips skipped as unreadable, when any).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from torch.utils.data import DataLoader

from kit import distributed as D
from kit.adapt_bn import adapt_bn
from kit.config import AdaptBNConfig, TrainConfig
from kit.data import DeviceLoader, build_loader, check_finished
from kit.optim import WarmupCosine, build_optimizer
from kit.predictions import Predictions

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pth"
BEST = "best.pth"
METRICS = "metrics.jsonl"
BAD_VIDEOS = "bad_videos.txt"
_HIGHER_IS_BETTER = {"top1": True, "mean_class_acc": True, "loss": False}


# ---------------------------------------------------------------- pieces of a step


class VideoMixup(Mixup):
    """timm's :class:`~timm.data.Mixup` for clips ``(B, C, T, H, W)`` and soft targets ``(B, K)``.

    timm indexes ``x[:, :, y0:y1, x0:x1]``, which on 5-D video would cut over T and H; the clip
    is mixed as a ``(B, C*T, H, W)`` view instead, so cutmix pastes the same box in every frame.
    Targets are mixed with the same pairs (clip i with clip B-1-i) and weights as the clips.
    """

    def __call__(self, x: torch.Tensor, target: torch.Tensor):
        if len(x) % 2:  # timm pairs clip i with B-1-i; a ragged last batch stays unmixed
            return x, target
        x = x.contiguous()
        flat = x.view(x.shape[0], -1, *x.shape[-2:])  # shares memory: timm mixes in place
        if self.mode == "elem":
            lam = self._mix_elem(flat)
        elif self.mode == "pair":
            lam = self._mix_pair(flat)
        else:
            lam = self._mix_batch(flat)
        return x, target * lam + target.flip(0) * (1.0 - lam)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-clip cross entropy against probability targets: ``(B, K), (B, K) -> (B,)``.

    The per-clip form of timm's ``SoftTargetCrossEntropy``; with a label-smoothed one-hot target
    it equals ``LabelSmoothingCrossEntropy``.
    """
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def targets(batch: dict, *, num_classes: int, smoothing: float, soft: bool) -> torch.Tensor:
    """Training targets ``(B, K)``: ``batch["probs"]`` (renormalised) when ``soft``, else smoothed one-hot."""
    if soft:
        if "probs" not in batch:
            raise KeyError("soft targets asked for, but the batch has no 'probs' (is the list a pseudo list?)")
        probs = batch["probs"].float()
        return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
    labels = batch["label"]
    if (labels < 0).any() or (labels >= num_classes).any():
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise ValueError(f"training label {bad} is outside 0..{num_classes - 1} (an unlabelled clip in a training list?)")
    onehot = F.one_hot(labels, num_classes).float()
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def _flatten_samples(video: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # (B, S, C, T, H, W) -> (B*S, C, T, H, W): each augmented sample is one more clip of the batch
    check_finished(video)
    if video.ndim == 6:
        s = video.shape[1]
        return video.flatten(0, 1), target.repeat_interleave(s, dim=0)
    return video, target


def _autocast(device: torch.device, params: TrainConfig):
    dtype = torch.float16 if params.amp_dtype == "float16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=params.amp and device.type == "cuda")


def _all_have(flag: bool, device) -> bool:
    # under DDP every process must take the same steps: skip one unless every rank has its batch
    if not D.is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(D.all_reduce_sum(t).item() == D.world_size())


def _cycle(loader, epoch: int):
    """Batches of ``loader`` forever; each pass reshuffles (DistributedSampler: ``set_epoch``)."""
    k = 0
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch * 1000 + k)
        yield from loader
        k += 1


def _progress(total: int, *, desc: str, enabled: bool):
    """A tqdm bar for one epoch: text in a terminal, a widget in Jupyter/papermill, nothing in logs."""
    from tqdm.auto import tqdm

    show = enabled and D.is_main() and (sys.stderr.isatty() or _in_notebook())
    return tqdm(total=total, desc=desc, disable=not show, leave=False, mininterval=3.0, dynamic_ncols=True)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


# ---------------------------------------------------------------- one epoch


def train_one_epoch(
    model: nn.Module,
    loader,
    *,
    optimizer: torch.optim.Optimizer,
    schedule: WarmupCosine,
    device: torch.device,
    epoch: int,
    params: TrainConfig,
    num_classes: int,
    mixup: VideoMixup | None = None,
    scaler: torch.amp.GradScaler | None = None,
    pseudo_loader=None,
    pseudo_mode: str = "alternate",
    pseudo_weight: float = 1.0,
    soft_targets: bool = False,
    bad: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` for one epoch (``epoch`` is 0-based); returns the epoch's training stats.

    Each batch's ``video`` ``(B, C, T, H, W)`` or ``(B, S, C, T, H, W)`` (S samples per clip,
    flattened into the batch with repeated targets) is trained against smoothed one-hot targets
    (or ``probs`` of pseudo batches with ``soft_targets``), mixed up when ``mixup`` is given.
    Paths of skipped clips are appended to ``bad``. Raises :class:`FloatingPointError` naming
    the epoch and iteration on a NaN or inf loss, before the step that would spread it.
    Returns ``{"loss", "lr", "clips", "iterations", "time_s", "clips_per_s"}`` (+ ``"pseudo_loss"``).
    """
    if pseudo_mode not in ("alternate", "mixed"):
        raise ValueError(f"pseudo_mode must be 'alternate' or 'mixed', got {pseudo_mode!r}")
    model.train()
    bad = [] if bad is None else bad
    n_iters = max(len(loader), len(pseudo_loader)) if pseudo_loader is not None else len(loader)
    labelled = _cycle(loader, epoch)
    pseudo = _cycle(pseudo_loader, epoch) if pseudo_loader is not None else None
    sums = {"loss": 0.0, "n": 0, "pseudo_loss": 0.0, "pseudo_n": 0}
    start = time.perf_counter()

    def step(video, target, weight, it, what):
        # one optimizer step on (B, C, T, H, W) clips; weight (B,) per-clip loss weights
        video = video.to(device, non_blocking=True)
        target, weight = target.to(device), weight.to(device)
        if mixup is not None:
            video, target = mixup(video, target)
        with _autocast(device, params):
            logits = model(video)
        per_clip = soft_cross_entropy(logits, target)
        loss = (per_clip * weight).sum() / weight.sum()
        finite = torch.isfinite(loss.detach()).float()
        if not _all_have(bool(finite.item()), device):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at epoch {epoch + 1}, iteration {it + 1} ({what} step)"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if params.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), params.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return per_clip.detach()

    def prepare(batch, *, soft):
        # batch -> (video (N, C, T, H, W), targets (N, K)), or None for an all-bad batch
        bad.extend(batch.get("bad", []))
        if batch["video"] is None:
            return None
        return _flatten_samples(batch["video"], targets(batch, num_classes=num_classes,
                                                        smoothing=params.label_smoothing, soft=soft))

    bar = _progress(n_iters, desc=f"epoch {epoch + 1}/{params.epochs}", enabled=progress)
    lr = schedule.get_last_lr()
    for it in range(n_iters):
        lr = schedule.get_last_lr()
        lab = prepare(next(labelled), soft=False)
        pse = prepare(next(pseudo), soft=soft_targets) if pseudo is not None else None
        if pseudo is not None and pseudo_mode == "mixed":
            parts = [(p, w) for p, w in ((lab, 1.0), (pse, pseudo_weight)) if p is not None]
            if _all_have(bool(parts), device):
                video = torch.cat([p[0] for p, _ in parts])
                target = torch.cat([p[1] for p, _ in parts])
                weight = torch.cat([torch.full((len(p[0]),), w) for p, w in parts])
                per_clip = step(video, target, weight, it, "mixed").cpu()
                n_lab = len(lab[0]) if lab is not None else 0
                sums["loss"] += per_clip[:n_lab].sum().item()
                sums["n"] += n_lab
                sums["pseudo_loss"] += per_clip[n_lab:].sum().item()
                sums["pseudo_n"] += len(per_clip) - n_lab
        else:
            if _all_have(lab is not None, device):
                per_clip = step(lab[0], lab[1], torch.ones(len(lab[0])), it, "labelled")
                sums["loss"] += per_clip.sum().item()
                sums["n"] += len(per_clip)
            if pseudo is not None and _all_have(pse is not None, device):
                # with AdamW a weight on a step of its own mostly acts through clipping and eps
                per_clip = step(pse[0], pse[1], torch.full((len(pse[0]),), pseudo_weight), it, "pseudo")
                sums["pseudo_loss"] += per_clip.sum().item()
                sums["pseudo_n"] += len(per_clip)
        schedule.step()
        if it % max(1, params.log_every) == 0 or it == n_iters - 1:
            bar.set_postfix(loss=f"{sums['loss'] / max(1, sums['n']):.4f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)
    bar.close()

    elapsed = time.perf_counter() - start
    clips = D.all_reduce_sum(torch.tensor([sums["n"] + sums["pseudo_n"]], dtype=torch.float64, device=device))
    stats = {
        "loss": D.reduce_weighted({"loss": sums["loss"] / max(1, sums["n"])}, sums["n"], device=device)["loss"],
        "lr": lr,
        "clips": int(clips.item()),
        "iterations": n_iters,
        "time_s": elapsed,
        "clips_per_s": float(clips.item()) / elapsed if elapsed > 0 else float("nan"),
    }
    if pseudo is not None:
        stats["pseudo_loss"] = D.reduce_weighted(
            {"l": sums["pseudo_loss"] / max(1, sums["pseudo_n"])}, sums["pseudo_n"], device=device
        )["l"]
    return stats


# ---------------------------------------------------------------- inference


@dataclass
class _Rows:
    """Per-clip results of one inference pass, gathered over processes, in dataset-index order."""

    index: np.ndarray  # (N,) int64
    logits: np.ndarray  # (N, K) float32, summed over the S samples of each clip
    labels: np.ndarray  # (N,) int64
    samples: int  # S
    bad: list = field(default_factory=list)  # paths of skipped clips


@torch.no_grad()
def _infer(model: nn.Module, loader, *, device: torch.device, amp: bool, progress: bool, desc: str) -> _Rows:
    model.eval()
    idx, logits, labels, bad = [], [], [], []
    samples = 1
    bar = _progress(len(loader), desc=desc, enabled=progress)
    for batch in loader:
        bad.extend(batch.get("bad", []))
        video = batch["video"]
        if video is not None:
            check_finished(video)
            b = video.shape[0]
            samples = video.shape[1] if video.ndim == 6 else 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                out = model(video.to(device, non_blocking=True).flatten(0, 1) if video.ndim == 6 else video.to(device))
            logits.append(out.float().view(b, samples, -1).sum(dim=1).cpu())  # TTA: sum over views x crops
            idx.append(batch["index"].cpu())
            labels.append(batch["label"].cpu())
        bar.update(1)
    bar.close()
    local = (
        torch.cat(idx).numpy() if idx else np.zeros(0, np.int64),
        torch.cat(logits).numpy() if logits else None,
        torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
        samples,
        bad,
    )
    parts = D.all_gather_object(local)
    k = next((p[1].shape[1] for p in parts if p[1] is not None), 0)
    index = np.concatenate([p[0] for p in parts]).astype(np.int64)
    scores = np.concatenate([p[1] if p[1] is not None else np.zeros((0, k), np.float32) for p in parts])
    labels_all = np.concatenate([p[2] for p in parts]).astype(np.int64)
    # DistributedSampler pads the last round with repeated clips: keep each index once
    index, first = np.unique(index, return_index=True)
    all_bad = sorted({b for p in parts for b in p[4]})
    return _Rows(index, scores[first], labels_all[first], max(p[3] for p in parts), all_bad)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, *, num_classes: int) -> dict:
    """top1, top5, mean_class_acc, loss (cross entropy) and confusion ``(K, K)`` (rows: true class).

    ``logits`` ``(N, K)``; clips with label -1 (unknown) are left out. ``n`` counts the clips used.
    """
    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
    n = int(len(labels))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    if n == 0:
        nan = float("nan")
        return {"top1": nan, "top5": nan, "mean_class_acc": nan, "loss": nan, "confusion": confusion, "n": 0}
    if labels.max() >= num_classes:
        raise ValueError(f"label {labels.max()} is outside 0..{num_classes - 1}")
    pred = logits.argmax(axis=1)
    np.add.at(confusion, (labels, pred), 1)
    top = np.argsort(-logits, axis=1)[:, : min(5, logits.shape[1])]
    support = confusion.sum(axis=1)
    recall = np.diag(confusion)[support > 0] / support[support > 0]
    t = torch.from_numpy(logits.astype(np.float32))
    return {
        "top1": float((pred == labels).mean()),
        "top5": float((top == labels[:, None]).any(axis=1).mean()),
        "mean_class_acc": float(recall.mean()),
        "loss": float(F.cross_entropy(t, torch.from_numpy(labels)).item()),
        "confusion": confusion,
        "n": n,
    }


def evaluate(
    model: nn.Module,
    loader,
    *,
    device: str | torch.device,
    num_classes: int | None = None,
    amp: bool = True,
    progress: bool = True,
) -> dict:
    """Top-1, top-5, mean class accuracy, loss and confusion matrix of ``model`` on ``loader``.

    Batches hold ``video`` ``(B, C, T, H, W)`` or ``(B, S, C, T, H, W)``; the S samples' logits
    are averaged per clip (same ranking as their sum; the loss is that of the average). Under DDP
    results are gathered from every process (padding of the DistributedSampler dropped) and every
    process returns the same dict: ``top1, top5, mean_class_acc, loss, confusion (K, K), n``.
    """
    device = torch.device(device)
    rows = _infer(model, loader, device=device, amp=amp, progress=progress, desc="evaluate")
    k = num_classes or rows.logits.shape[1]
    return classification_metrics(rows.logits / rows.samples, rows.labels, num_classes=k)


def predict(
    model: nn.Module,
    dataset_or_loader,
    *,
    device: str | torch.device,
    batch_size: int = 8,
    num_workers: int = 0,
    amp: bool = True,
    meta: dict | None = None,
    save_to: str | Path | None = None,
    progress: bool = True,
) -> Predictions:
    """Per-clip logits ``(N, K)`` summed over the S = views x crops samples of each clip.

    ``dataset_or_loader``: a :class:`kit.data.VideoDataset` (a loader in list order is built,
    with a DistributedSampler under DDP) or a loader over one (:func:`kit.data.build_loader`). Rows follow the dataset's list
    (``dataset.paths``, ``dataset.labels``); clips skipped as unreadable get zero logits (uniform
    probabilities) and are named in ``meta["bad"]``. ``meta`` records views, crops and gamma (from
    the dataset and its transform) plus anything passed in. Under DDP every process returns the
    full predictions; ``save_to`` is written by rank 0 only (see :meth:`Predictions.save`).
    """
    device = torch.device(device)
    if isinstance(dataset_or_loader, (DataLoader, DeviceLoader)):
        loader, dataset = dataset_or_loader, dataset_or_loader.dataset
    else:
        dataset = dataset_or_loader
        loader = build_loader(dataset, batch_size=batch_size, train=False, num_workers=num_workers, device=device)
    rows = _infer(model, loader, device=device, amp=amp, progress=progress, desc="predict")
    paths = list(getattr(dataset, "paths", None) or [])
    n = len(dataset)
    if len(paths) != n:
        raise ValueError(f"predict needs a dataset with .paths for its {n} clips (got {len(paths)} paths)")
    k = rows.logits.shape[1] if len(rows.logits) else _num_classes_of(model)
    scores = np.zeros((n, k), dtype=np.float32)
    scores[rows.index] = rows.logits
    labels = np.asarray(getattr(dataset, "labels", np.full(n, -1)), dtype=np.int64).copy()
    labels[rows.index] = rows.labels
    bad = rows.bad
    missing = sorted(set(range(n)) - set(rows.index.tolist()))
    if len(missing) != len(bad):
        raise RuntimeError(
            f"predict saw {len(rows.index)} clips and {len(bad)} skipped ones of {n}: the loader does not cover the "
            f"dataset once (first missing index {missing[0] if missing else None})"
        )
    if bad:
        log.warning("%d clip(s) could not be read; their rows hold zero logits: %s", len(bad), bad[:5])
    transform = getattr(dataset, "transform", None)
    info = {
        "views": getattr(dataset, "views", None),
        "crops": getattr(transform, "crops", None),
        "gamma": getattr(transform, "gamma", None),
        "samples_per_clip": rows.samples,
        "bad": bad,
        **(meta or {}),
    }
    preds = Predictions(paths=paths, labels=labels, scores=scores, kind="logits", meta=info)
    if save_to is not None:
        with D.main_process() as main:
            if main:
                preds.save(save_to)
    return preds


def _num_classes_of(model: nn.Module) -> int:
    head = getattr(D.unwrap(model), "num_classes", None)
    if head is None:
        raise RuntimeError("no clip could be predicted and the model does not say its num_classes")
    return int(head)


# ---------------------------------------------------------------- checkpoints


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(loaders) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
        "loaders": [[g.get_state() for g in _generators(ld)] for ld in loaders],
    }


def _set_rng_state(state: dict, loaders) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    for ld, saved in zip(loaders, state["loaders"], strict=True):
        for g, s in zip(_generators(ld), saved, strict=False):  # a loader may have changed
            g.set_state(s)


def _generators(loader) -> list[torch.Generator]:
    # a seeded loader shuffles with its own generator(s): their state is part of an exact resume
    if loader is None:
        return []
    found = [getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)]
    out, seen = [], set()
    for g in found:
        if isinstance(g, torch.Generator) and id(g) not in seen:
            seen.add(id(g))
            out.append(g)
    return out


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`fit` (a plain dict; tensors on CPU)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_weights(model: nn.Module, path) -> None:
    try:
        from kit.models import load_pretrained
    except ImportError:
        load_pretrained = None
    if load_pretrained is not None:
        load_pretrained(model, str(path))
        return
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt.get("model", ckpt))


# ---------------------------------------------------------------- fit


@dataclass
class FitSummary:
    """What :func:`fit` did: per-epoch history (the lines of metrics.jsonl) and where things are."""

    history: list[dict]
    best_metric: float | None
    best_epoch: int | None
    epochs_done: int
    checkpoint: Path
    best: Path
    bad_videos: list[str]
    finished: bool


def fit(
    model: nn.Module,
    train_loader,
    *,
    val_loader=None,
    params: TrainConfig,
    out_dir,
    device: str | torch.device,
    num_classes: int,
    pseudo_loader=None,
    pseudo_mode: str = "alternate",
    pseudo_weight: float = 1.0,
    soft_targets: bool = False,
    adapt_loader=None,
    adapt_params: AdaptBNConfig | None = None,
    init_from: str | Path | None = None,
    seed: int | None = None,
    stop_after_epoch: int | None = None,
    progress: bool = True,
) -> FitSummary:
    """Train ``model`` for ``params.epochs`` epochs, evaluating, checkpointing and logging each one.

    AdamW with weight-decay groups (:mod:`kit.optim`), warmup + cosine stepped per iteration,
    bf16 autocast on CUDA, gradient clipping, mixup/cutmix and label smoothing. With
    ``pseudo_loader`` each iteration also trains on pseudo-labelled clips (see the module doc;
    ``pseudo_weight`` scales their loss, ``soft_targets`` uses their ``probs``). With
    ``params.adapt_bn_every_epoch`` Adapt BN runs on ``adapt_loader`` after every epoch (before
    validation). ``init_from`` loads weights only (optimizer and schedule restart); with
    ``params.resume == "auto"`` an existing ``out_dir/checkpoint.pth`` is continued exactly
    instead. ``stop_after_epoch`` ends this call after that many epochs in total (checkpoint
    written; a later call resumes). ``seed`` seeds torch, numpy and random on a fresh start.
    Raises FloatingPointError on a NaN/inf loss; the last checkpoint is left as it was.
    """
    device = torch.device(device)
    out_dir = Path(out_dir)
    ckpt_path, best_path, metrics_path = out_dir / CHECKPOINT, out_dir / BEST, out_dir / METRICS
    with D.main_process() as main:
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
    if params.adapt_bn_every_epoch and adapt_loader is None:
        raise ValueError("train.adapt_bn_every_epoch is on but fit() got no adapt_loader (the dark pool)")
    if adapt_loader is not None and not params.adapt_bn_every_epoch:
        log.warning("fit() got an adapt_loader but train.adapt_bn_every_epoch is off: it is not used")
    adapt_params = adapt_params or AdaptBNConfig()

    resume = params.resume == "auto" and ckpt_path.exists()
    if seed is not None and not resume:
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
    model.to(device)
    if params.grad_checkpointing:
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        else:
            log.warning("train.grad_checkpointing is on but %s offers no set_grad_checkpointing", type(model).__name__)
    if init_from is not None and not resume:
        _load_weights(model, init_from)
        log.info("weights from %s (optimizer and schedule start afresh)", init_from)

    iters = max(len(train_loader), len(pseudo_loader)) if pseudo_loader is not None else len(train_loader)
    optimizer = build_optimizer(model, lr=params.lr, weight_decay=params.weight_decay, eps=params.opt_eps)
    schedule = WarmupCosine(
        optimizer, total_steps=params.epochs * iters, warmup_steps=round(params.warmup_epochs * iters),
        lr=params.lr, warmup_lr=params.warmup_lr, min_lr=params.min_lr,
    )
    fp16 = params.amp and params.amp_dtype == "float16" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if fp16 else None  # bf16 has float32's range: no scaling
    loaders = [train_loader, pseudo_loader, adapt_loader]

    start_epoch, best_metric, best_epoch, bad = 0, None, None, []
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        D.unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_metric, best_epoch = ckpt["epoch"], ckpt["best_metric"], ckpt.get("best_epoch")
        bad = list(ckpt.get("bad_videos", []))
        rng = ckpt["rng"]
        if len(rng) != D.world_size():
            log.warning("checkpoint has RNG states of %d processes, this run has %d: resume is not exact",
                        len(rng), D.world_size())
        _set_rng_state(rng[min(D.rank(), len(rng) - 1)], loaders)
        if ckpt.get("params") != dataclasses.asdict(params):
            log.warning("resuming %s written with different train params; continuing with the current ones", ckpt_path)
        log.info("resumed from %s after epoch %d", ckpt_path, start_epoch)
    history = _read_history(metrics_path, upto=start_epoch)

    if D.is_distributed():
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    mixup = None
    if params.mixup > 0 or params.cutmix > 0:
        mixup = VideoMixup(mixup_alpha=params.mixup, cutmix_alpha=params.cutmix, label_smoothing=0.0,
                           num_classes=num_classes)

    last_epoch = params.epochs if stop_after_epoch is None else min(params.epochs, stop_after_epoch)
    for epoch in range(start_epoch, last_epoch):
        try:
            stats = train_one_epoch(
                model, train_loader, optimizer=optimizer, schedule=schedule, device=device, epoch=epoch,
                params=params, num_classes=num_classes, mixup=mixup, scaler=scaler, pseudo_loader=pseudo_loader,
                pseudo_mode=pseudo_mode, pseudo_weight=pseudo_weight, soft_targets=soft_targets, bad=bad,
                progress=progress,
            )
        except FloatingPointError as exc:
            kept = f"{ckpt_path} (after epoch {epoch})" if epoch > 0 else "none (it failed in the first epoch)"
            raise FloatingPointError(f"{exc}; training stopped, last good checkpoint kept: {kept}") from exc
        row = {"epoch": epoch + 1, **stats}
        if params.adapt_bn_every_epoch:
            report = adapt_bn(model, adapt_loader, num_batches=adapt_params.num_batches, device=device, amp=params.amp)
            row["adapt_bn_clips"] = report.clips
        validate = val_loader is not None and ((epoch + 1) % params.val_every == 0 or epoch + 1 == params.epochs)
        if validate:
            ev = evaluate(model, val_loader, device=device, num_classes=num_classes, amp=params.amp, progress=progress)
            row.update({k: ev[k] for k in ("top1", "top5", "mean_class_acc")}, val_loss=ev["loss"])
            value = ev[params.metric]
            better = best_metric is None or (
                value > best_metric if _HIGHER_IS_BETTER[params.metric] else value < best_metric
            )
        else:  # without val the latest epoch is the best known; between evaluations nothing changes
            value, better = None, val_loader is None
        if better:
            best_metric, best_epoch = value, epoch + 1
        bad = sorted({p for part in D.all_gather_object(bad) for p in part})
        row["bad_videos"] = len(bad)
        history.append(row)

        rng = D.all_gather_object(_rng_state(loaders))
        with D.main_process() as main:
            if main:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(_jsonable(row)) + "\n")
                if bad:
                    (out_dir / BAD_VIDEOS).write_text("".join(p + "\n" for p in bad))
                ckpt = {
                    "model": D.unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "epoch": epoch + 1,
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "params": dataclasses.asdict(params),
                    "rng": rng,
                    "bad_videos": bad,
                }
                atomic_save(ckpt, ckpt_path)
                if better:
                    atomic_save(ckpt, best_path)
        if D.is_main():
            log.info("%s", _epoch_line(row, params))

    done = max(start_epoch, last_epoch)
    return FitSummary(
        history=history, best_metric=best_metric, best_epoch=best_epoch, epochs_done=done,
        checkpoint=ckpt_path, best=best_path, bad_videos=bad, finished=done >= params.epochs,
    )


def _read_history(path: Path, *, upto: int) -> list[dict]:
    """Lines of metrics.jsonl for epochs <= ``upto``; later ones (written before a crash) are dropped."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["epoch"] <= upto]
    if len(kept) != len(rows) and D.is_main():
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    D.barrier()
    return kept


def _jsonable(row: dict) -> dict:
    # NaN is not JSON: write null
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _epoch_line(row: dict, params: TrainConfig) -> str:
    parts = [f"epoch {row['epoch']}/{params.epochs}", f"loss {row['loss']:.4f}"]
    if "pseudo_loss" in row:
        parts.append(f"pseudo loss {row['pseudo_loss']:.4f}")
    if "top1" in row:
        parts.append(f"top1 {row['top1']:.3f} top5 {row['top5']:.3f} mca {row['mean_class_acc']:.3f}")
    parts.append(f"lr {row['lr']:.2e}, {row['time_s']:.1f}s, {row['clips_per_s']:.1f} clips/s")
    return ", ".join(parts)
