"""Cost of Adapt BN against one inference pass over the same clips (target: ratio <= 1.1).

Run ``python bench/adapt_bn.py`` (CPU, tiny models, 8 frames x 64 px) or, on a GPU,
``python bench/adapt_bn.py --device cuda --models uniformer_b,slowfast_r101 --frames 32 --size 224``.
``run_benchmark(...)`` returns the rows as dicts for a benchmark suite.

Both passes see the same batches, already in memory, so data loading is left out: the ratio
measures the model work alone (Adapt BN runs its BatchNorm layers in training mode, which
computes batch statistics, and inference runs them in eval mode). Each time is the best of
``repeats`` runs after one warm-up batch, the two passes taking turns; CUDA is synchronised.
Autocast (bf16) on CUDA in both.

``--split-blocks-per-sm 0,1,4 --rounds 3`` compares values of
:data:`kit.adapt_bn.SPLIT_BLOCKS_PER_SM` (CUDA; 0: PyTorch's training-mode kernel everywhere) and prints
how far each value's running statistics lie from the first value's. ``--stats-kernel pytorch,triton``
adds the settings of :data:`kit.adapt_bn.STATS_KERNEL` to compare (CUDA; "triton": every layer's
statistics from :func:`kit.bn_stats.chunk_stats`, whatever the cut). ``--layer-forward`` adds the pass
through the layers' own forward, without :class:`kit.adapt_bn.SplitForward` (any device; rows with
``stats_kernel`` "layer"), as the kit ran it on the CPU before e72b2f3.

Measured 2026-11-27 (``--device cuda --models slowfast_r101 --frames 32 --size 224 --batch 8 --batches 8
--repeats 3 --split-blocks-per-sm 0,1,4,16 --rounds 3``, one H100 80GB, torch 2.11): SlowFast-R101 1.49
with PyTorch's kernel, 1.17-1.18 with the default 4 pieces per multiprocessor; UniFormer-B 1.04-1.07
(``bench/RESULTS.md``). PyTorch's CUDA kernel for the batch statistics gives each channel one thread
block, and 118 of SlowFast-R101's 212 layers have at most 128 channels (the H100 has 132
multiprocessors): :class:`kit.adapt_bn.SplitForward` cuts them into pieces.
CPU, 1 thread, defaults with ``--frames 16``: uniformer_tiny 1.10, slowfast_tiny 1.17. On the CPU the
gap is PyTorch's statistics kernel for contiguous ``(N, C, T, H, W)`` input: per channel, a scalar loop
with a double-precision sum, once for the mean and once for the variance, where the eval-mode kernel
is one vectorised pass (``python -m bench.hotspots adapt_bn``). Statistics from torch's float
reductions in a forward pre-hook, the layer then run in eval mode on them, were slower still on the
tiny models: about ten small operator calls per layer and batch cost more than the kernel saves. So
were numpy's vectorised reductions (a sum and a centred ``einsum``, then the eval-mode kernel: more
per-call overhead than kernel saved on every one of slowfast_tiny's layers) and oneDNN's kernel (the
input viewed as 4-D in mkldnn layout: its two layout conversions cost more than the kernel saves). A
whole model in channels-last memory (whose statistics kernel is vectorised) lowered the ratio only by
slowing its inference pass down more than its Adapt BN pass; converting each layer's input to
channels-last and back cost more than it saved on every layer (1.80 against 1.07 ms per batch of 4
over the 38 layers, one thread). A numba kernel (float32 sums over chunks of 4096, float64 totals),
then the eval-mode kernel, took 0.77 ms against the training-mode kernel's 1.15 ms: about 3% of the
pass, for a compiled dependency and its JIT start in every process, so not taken. What was taken:
the pass calls PyTorch's training-mode kernel itself (``SplitForward`` on every device), without the
Python checks of the layer's forward and ``F.batch_norm`` on every call (``--layer-forward`` compares).
"""

from __future__ import annotations

import argparse
import logging
import time
from functools import partial

import torch

import kit.adapt_bn
from kit.adapt_bn import adapt_bn, bn_layers
from kit.models import create_model

logger = logging.getLogger(__name__)

TINY = ("uniformer_tiny", "slowfast_tiny")
LAYER = "layer"  # the setting without SplitForward: every BatchNorm layer's own forward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _inference_pass(model, clips, device) -> None:
    model.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for video in clips:
            model(video)


def _time(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_benchmark(
    *,
    models=TINY,
    device: str = "cpu",
    batches: int = 8,
    batch_size: int = 4,
    frames: int = 8,
    size: int = 64,
    repeats: int = 3,
    num_classes: int = 11,
    split_blocks_per_sm=(None,),
    stats_kernels=(None,),
    rounds: int = 1,
    channels_last: bool = False,
    layer_forward: bool = False,
) -> list[dict]:
    """One row per model, round and setting: each value of ``split_blocks_per_sm`` (None: the kit's
    :data:`kit.adapt_bn.SPLIT_BLOCKS_PER_SM`; 0: PyTorch's training-mode kernel everywhere) with the
    "pytorch" statistics kernel, and once more with "triton" (which needs no cut) when
    ``stats_kernels`` names it (None: the kit's :data:`kit.adapt_bn.STATS_KERNEL`):
    ``{model, device, batches, batch_size, frames, size, channels_last, bn_layers, split_blocks_per_sm,
    stats_kernel, round, infer_s, adapt_s, ratio}``, and with several settings ``mean_diff`` /
    ``var_rel_diff``: the largest difference of the running means, and relative one of the running
    variances, from the first setting's. The settings take turns ``rounds`` times, so that a drift of the
    machine shows. ``channels_last``: the models' weights in channels-last-3d memory, as the
    ``channels_last`` param builds them. ``layer_forward``: one more setting, the pass through the
    layers' own forward (``stats_kernel`` "layer")."""
    settings = _settings(split_blocks_per_sm, stats_kernels, layer_forward)
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(batch_size, 3, frames, size, size, generator=g).to(device) for _ in range(batches)]
    rows = []
    for name in models:
        model = create_model(name, num_classes=num_classes).to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last_3d)
        n_bn = len(bn_layers(model))
        _inference_pass(model, clips[:1], device)  # warm-up: kernels, allocator
        first = None
        for round_ in range(rounds):
            for blocks, kernel in settings:
                infer_s, adapt_s = _time_passes(model, clips, device, repeats, blocks, kernel)
                rows.append({
                    "model": name, "device": str(device), "batches": batches, "batch_size": batch_size,
                    "channels_last": channels_last,
                    "frames": frames, "size": size, "bn_layers": n_bn,
                    "split_blocks_per_sm": blocks if kernel == "pytorch" else "-", "stats_kernel": kernel,
                    "round": round_ + 1, "infer_s": round(infer_s, 4), "adapt_s": round(adapt_s, 4),
                    "ratio": round(adapt_s / infer_s, 3) if n_bn else None,  # no BatchNorm: Adapt BN does nothing
                })
                stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bn_layers(model)]
                if first is None:
                    first = stats
                elif stats and len(settings) > 1:
                    pairs = list(zip(stats, first, strict=True))
                    rows[-1]["mean_diff"] = max(float((m - m0).abs().max()) for (m, _), (m0, _) in pairs)
                    rows[-1]["var_rel_diff"] = max(float(((v - v0) / v0).abs().max()) for (_, v), (_, v0) in pairs)
    return rows


def _settings(split_blocks_per_sm, stats_kernels, layer_forward: bool = False) -> list[tuple[int, str]]:
    """``[(SPLIT_BLOCKS_PER_SM, STATS_KERNEL)]`` to time: every value of ``split_blocks_per_sm`` with
    PyTorch's statistics kernel, and Triton's once (it cuts nothing); with ``layer_forward``, last, the
    layers' own forward (``(0, "layer")``)."""
    kernels = [kit.adapt_bn.STATS_KERNEL if k is None else k for k in stats_kernels]
    for k in kernels:
        if k not in kit.adapt_bn.STATS_KERNELS:
            raise ValueError(f"unknown statistics kernel {k!r}: expected one of {kit.adapt_bn.STATS_KERNELS}")
    blocks = [kit.adapt_bn.SPLIT_BLOCKS_PER_SM if b is None else b for b in split_blocks_per_sm]
    settings = [(b, k) for k in dict.fromkeys(kernels) for b in (blocks if k == "pytorch" else blocks[:1])]
    return settings + [(0, LAYER)] if layer_forward else settings


def _time_passes(model, clips, device, repeats: int, blocks: int, kernel: str) -> tuple[float, float]:
    """Best inference and Adapt BN times, with ``SPLIT_BLOCKS_PER_SM = blocks`` and ``STATS_KERNEL =
    kernel`` for Adapt BN (``kernel`` "layer": through the layers' own forward); the two passes alternate,
    so that a slow stretch of a shared machine hits both alike."""
    kept = kit.adapt_bn.SPLIT_BLOCKS_PER_SM, kit.adapt_bn.STATS_KERNEL, kit.adapt_bn._split_layers
    if kernel == LAYER:
        kit.adapt_bn._split_layers = lambda layers, device: []  # no stand-in: every layer's own forward
        kernel = "pytorch"
    kit.adapt_bn.SPLIT_BLOCKS_PER_SM, kit.adapt_bn.STATS_KERNEL = blocks, kernel
    infer_s = adapt_s = float("inf")
    try:
        for _ in range(repeats):
            infer_s = min(infer_s, _time(partial(_inference_pass, model, clips, device), device))
            adapt_s = min(adapt_s, _time(partial(adapt_bn, model, clips, num_batches=len(clips), device=device), device))
    finally:
        kit.adapt_bn.SPLIT_BLOCKS_PER_SM, kit.adapt_bn.STATS_KERNEL, kit.adapt_bn._split_layers = kept
    return infer_s, adapt_s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TINY), help="comma-separated registered model names")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="clips per batch")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--split-blocks-per-sm", default=None,
        help="comma-separated values of kit.adapt_bn.SPLIT_BLOCKS_PER_SM to compare (CUDA; 0 = PyTorch's "
        "training-mode kernel everywhere; default: the kit's)",
    )
    parser.add_argument(
        "--stats-kernel", default=None,
        help="comma-separated values of kit.adapt_bn.STATS_KERNEL to compare (CUDA: pytorch, triton; "
        "default: the kit's)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="times the settings take turns")
    parser.add_argument(
        "--channels-last", action="store_true", help="models in channels-last-3d memory (params: channels_last)"
    )
    parser.add_argument(
        "--layer-forward", action="store_true",
        help="also time the pass through the layers' own forward, without kit.adapt_bn.SplitForward",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run_benchmark(
        models=[m for m in args.models.split(",") if m], device=args.device, batches=args.batches,
        batch_size=args.batch, frames=args.frames, size=args.size, repeats=args.repeats, rounds=args.rounds,
        split_blocks_per_sm=[int(b) for b in args.split_blocks_per_sm.split(",")] if args.split_blocks_per_sm
        else (None,),
        stats_kernels=args.stats_kernel.split(",") if args.stats_kernel else (None,),
        channels_last=args.channels_last, layer_forward=args.layer_forward,
    )
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r.get(k, "")) for k in keys))
    worst = max((r["ratio"] for r in rows if r["ratio"] is not None and r["stats_kernel"] != LAYER), default=None)
    print(f"worst ratio Adapt BN / inference: {worst} (target <= 1.1; the kit's settings)")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
