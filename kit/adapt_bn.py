"""Adapt BN: re-estimate BatchNorm running statistics on unlabelled target-domain (dark) clips.

Precise-BN style, as the method describes: every ``_BatchNorm`` layer's ``running_mean`` and
``running_var`` are recomputed from scratch as the equal-weight average, over the batches seen,
of the per-batch statistics the layer computes in training mode: the batch mean, and the
*unbiased* batch variance (what PyTorch stores in ``running_var``). Not the exponential
momentum blend of ordinary training. Affine weights and every other parameter and buffer are
left untouched; ``num_batches_tracked`` ends equal to the number of batches used.

During the pass the model is in eval mode except its BatchNorm layers, so dropout and drop path
are off; every module's train/eval mode is restored afterwards. A model without BatchNorm
(MViT uses LayerNorm only) is reported with a warning: Adapt BN changes nothing for it.

During the pass every layer with BatchNorm's own forward runs :class:`SplitForward`, on any device:
it calls PyTorch's training-mode kernel itself, checking each input shape once, where the layer's
forward and ``F.batch_norm`` check it in Python on every call.

On CUDA, PyTorch's training-mode kernel takes the statistics of a contiguous ``(N, C, ...)`` input
with one thread block per channel, a division per value in each thread: a layer of few channels
and many values (SlowFast's fast pathway: 8 channels of 1.6 M values each at 32 x 224, batch 4)
leaves most of the GPU idle. :class:`SplitForward` cuts each channel of such a layer into equal
pieces, PyTorch's own kernels take the statistics of each piece, and combine them as
:class:`torch.nn.SyncBatchNorm` combines those of several processes.
With ``STATS_KERNEL = "triton"`` the statistics of every layer come instead from one read of its input
by a Triton kernel (:mod:`kit.bn_stats`), combined the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from kit import bn_stats
from kit import distributed as D
from kit.data import check_finished

log = logging.getLogger(__name__)

NO_BN_WARNING = "model has no BatchNorm layers (e.g. MViT uses LayerNorm only): Adapt BN changes nothing"

# SplitForward cuts channels until there are this many pieces per multiprocessor (0: never; on an
# H100, SlowFast-R101 at batch 8 took 1.17-1.18x an inference pass with 4 or 16, 1.19-1.35x with 1,
# 1.49x with PyTorch's kernel everywhere)...
SPLIT_BLOCKS_PER_SM = 4
# ...and keeps at least this many values of a clip in each piece
SPLIT_MIN_VALUES = 2048
# what takes the pieces' statistics on CUDA: "pytorch" (torch.batch_norm_stats on the cut channels) or
# "triton" (kit.bn_stats.chunk_stats on every contiguous float32/bf16/fp16 input, cut or not: one
# read of the input, where PyTorch's kernel divides once per value; not yet timed on a GPU, so not
# the default: compare with bench/adapt_bn.py --stats-kernel pytorch,triton)
STATS_KERNEL = "pytorch"
STATS_KERNELS = ("pytorch", "triton")
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class AdaptBNReport:
    """What :func:`adapt_bn` did: BN layers re-estimated, clips and batches used, and any warning."""

    bn_layers: int
    clips: int
    batches: int
    warning: str | None = None
    time_s: float = 0.0

    def __str__(self) -> str:
        if self.warning:
            return f"Adapt BN: {self.warning}"
        return f"Adapt BN: {self.bn_layers} BatchNorm layers re-estimated on {self.clips} clips ({self.batches} batches)"


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [
        m for m in D.unwrap(model).modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _clips(batch) -> torch.Tensor | None:
    # (B, S, C, T, H, W) -> (B*S, C, T, H, W): every sample of a clip is one more input
    video = batch["video"] if isinstance(batch, dict) else batch
    if video is None:
        return None
    check_finished(video)
    return video.flatten(0, 1) if video.ndim == 6 else video


def split_factor(channels: int, values: int, blocks: int, min_values: int | None = None) -> int:
    """Into how many equal pieces to cut each channel's ``values`` (per clip): the smallest power of
    two ``k`` with ``channels * k >= blocks``, as long as ``k`` divides ``values`` and a piece keeps
    at least ``min_values`` (default: SPLIT_MIN_VALUES). 1 means no cut."""
    min_values = SPLIT_MIN_VALUES if min_values is None else min_values
    k = 1
    while channels * k < blocks and values % (2 * k) == 0 and values // (2 * k) >= min_values:
        k *= 2
    return k


class SplitForward:
    """``bn``'s training-mode forward during the Adapt BN pass, standing in as ``bn.forward``.

    Every input goes to ``torch.batch_norm`` in training mode, which normalises it with the batch
    mean and biased variance and moves the running statistics by ``bn.momentum`` towards the batch
    mean and unbiased variance, as the layer's own forward does; what that forward checks in Python
    on every call (the input's dimensions, more than one value per channel) is checked once per input
    shape, when its plan is made (``plans``). On the CPU that is about 5 us a layer and batch, 2-3% of an
    inference pass of ``slowfast_tiny`` (38 layers; ``bench/adapt_bn.py --layer-forward`` compares).

    On CUDA, a contiguous input whose channels :func:`split_factor` cuts into ``k > 1`` pieces has its
    batch statistics taken over the pieces and combined, as :class:`torch.nn.SyncBatchNorm` combines
    those of several processes. With ``kernel="triton"``, a contiguous float32, bf16 or fp16 input, cut
    or not, has the statistics of its chunks taken by :func:`kit.bn_stats.chunk_stats` instead, and
    combined as the pieces' are. A non-contiguous input (channels-last: PyTorch's kernel for it already
    spreads a channel over the GPU) is never cut. The pass is launch-bound at small batches, so the
    layer's tensors are looked up once.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, blocks: int, kernel: str = "pytorch"):
        self.bn, self.blocks, self.plans = bn, blocks, {}
        self.tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
        self.cudnn = torch.backends.cudnn.enabled
        self.triton = kernel == "triton"

    def _plan(self, x: torch.Tensor) -> tuple:
        self.bn._check_input_dim(x)  # e.g. BatchNorm3d: "expected 5D input (got 4D input)"
        n, c, values = x.shape[0], x.shape[1], math.prod(x.shape[2:])
        if n * values <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        if not x.is_cuda or x.dim() < 3:
            return (1,)
        if self.triton and x.dtype in _TRITON_DTYPES:
            return ("triton", bn_stats.chunk_counts(x.shape, self.tensors[2].dtype, x.device))
        k = split_factor(c, values, self.blocks)
        if k == 1:
            return (1,)
        # (N, C*k, values/k): piece j of channel i is channel i*k + j, its values still contiguous;
        # its statistics come out in that order, read as (k, C) they stand where SyncBatchNorm's
        # processes stand
        counts = torch.full((k,), float(n * values // k), dtype=self.tensors[2].dtype, device=x.device)
        return k, (n, c * k, values // k), (k, c), (1, k), counts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        plan = self.plans.get(x.shape) or self.plans.setdefault(x.shape, self._plan(x))
        weight, bias, running_mean, running_var = self.tensors
        if plan[0] == 1 or not x.is_contiguous():
            return torch.batch_norm(
                x, weight, bias, running_mean, running_var, True, bn.momentum, bn.eps, self.cudnn
            )
        if plan[0] == "triton":
            counts = plan[1]
            mean, invstd = bn_stats.chunk_stats(x, bn.eps)
        else:
            _, pieces, size, stride, counts = plan
            mean, invstd = torch.batch_norm_stats(x.view(pieces), bn.eps)
            mean, invstd = mean.as_strided(size, stride), invstd.as_strided(size, stride)
        mean, invstd = torch.batch_norm_gather_stats_with_counts(
            x, mean, invstd, running_mean, running_var, bn.momentum, bn.eps, counts
        )
        return torch.batch_norm_elemt(x, weight, bias, mean, invstd, bn.eps)


def _split_layers(layers, device: torch.device) -> list:
    """The layers :class:`SplitForward` stands in for: those with BatchNorm's own forward (SyncBatchNorm
    has its own), on any device."""
    if STATS_KERNEL not in STATS_KERNELS:
        raise ValueError(f"kit.adapt_bn.STATS_KERNEL must be one of {STATS_KERNELS}, got {STATS_KERNEL!r}")
    if device.type == "cuda" and STATS_KERNEL == "triton" and importlib.util.find_spec("triton") is None:
        raise ModuleNotFoundError('kit.adapt_bn.STATS_KERNEL = "triton" needs the triton package, which is not installed')
    return [bn for bn in layers if type(bn).forward is nn.modules.batchnorm._BatchNorm.forward]


@torch.no_grad()
def adapt_bn(
    model: nn.Module,
    loader,
    *,
    num_batches: int = 200,
    device: str | torch.device,
    amp: bool = True,
) -> AdaptBNReport:
    """Recompute every BatchNorm layer's running mean and variance on at most ``num_batches`` batches.

    ``loader`` yields batches of the kit.data contract (``batch["video"]`` of shape
    ``(B, C, T, H, W)`` or ``(B, S, C, T, H, W)``; batches with ``video=None`` are skipped) or
    plain video tensors. The statistics stay untouched until a first usable batch arrives, so an
    empty loader never wipes them. Under DDP each process adapts on its shard with
    ``ceil(num_batches / world_size)`` batches and the statistics are averaged over all
    processes' batches (equal weight per batch); a rank that saw no batch has weight 0, but its
    statistics are then the others' average, so all ranks end with the same buffers. ``amp`` enables bf16
    autocast on CUDA (ignored on CPU).
    """
    device = torch.device(device)
    layers = bn_layers(model)
    per_process = -(-num_batches // D.world_size())  # the processes share the batch budget
    if not layers:
        log.warning(NO_BN_WARNING)
        return AdaptBNReport(bn_layers=0, clips=0, batches=0, warning=NO_BN_WARNING)

    net = D.unwrap(model)  # forward without DDP's gradient hooks and buffer broadcasts
    modes = {m: m.training for m in net.modules()}
    momenta = {bn: bn.momentum for bn in layers}
    # the counters are set once at the end: BatchNorm would otherwise add 1 to each, in its own
    # kernel call, for every layer and batch (num_batches_tracked=None skips that; momentum rules)
    counters = {bn: bn.num_batches_tracked for bn in layers}
    split = _split_layers(layers, device)
    blocks = 0  # no cuts off CUDA
    if split and device.type == "cuda":
        blocks = max(SPLIT_BLOCKS_PER_SM, 0) * torch.cuda.get_device_properties(device).multi_processor_count
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
    start = time.perf_counter()
    batches = clips = 0
    try:
        net.eval()
        for bn in layers:
            bn.train()
            bn.num_batches_tracked = None
        for bn in split:
            bn.forward = SplitForward(bn, blocks, STATS_KERNEL)
        for batch in loader:
            if batches >= per_process:
                break
            video = _clips(batch)
            if video is None:
                continue
            for bn in layers:
                if batches == 0:
                    bn.running_mean.zero_()  # what reset_running_stats does, less the counter
                    bn.running_var.fill_(1)
                # running = (1 - 1/n) running + (1/n) batch: the equal-weight average of n batches.
                # PyTorch's own momentum=None does the same but reads the count back from the GPU
                # (a sync per layer and batch: 1.4-1.7x an inference pass on an H100). momentum is a
                # plain attribute: set in the instance's dict, without nn.Module.__setattr__'s
                # parameter, buffer and submodule checks (a layer and a batch each: 0.7 ms of a pass
                # of 16 batches over slowfast_tiny's 38 layers, on the CPU)
                vars(bn)["momentum"] = 1.0 / (batches + 1)
            with autocast:
                net(video.to(device, non_blocking=True))
            batches += 1
            clips += video.shape[0]
    finally:
        for bn in split:
            vars(bn).pop("forward", None)  # back to the class's own
        for bn, counter in counters.items():
            bn.num_batches_tracked = counter
            if batches:
                counter.fill_(batches)
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for m, training in modes.items():
            m.training = training  # each module's own flag (m.train() would redo its whole subtree)

    if D.is_distributed():
        # average over all processes' batches: weight each process's average by its batch count
        total = D.all_reduce_sum(torch.tensor(float(batches), device=device))
        clips = int(D.all_reduce_sum(torch.tensor(float(clips), device=device)))
        if total > 0:
            for bn in layers:
                for buf in (bn.running_mean, bn.running_var):
                    buf.copy_(D.all_reduce_sum(buf * batches) / total)
                bn.num_batches_tracked.fill_(int(total))
        batches = int(total)

    warning = None
    if batches == 0:
        warning = "the adaptation loader gave no usable batch: BatchNorm statistics left as they were"
        log.warning(warning)
    report = AdaptBNReport(
        bn_layers=len(layers), clips=clips, batches=batches, warning=warning, time_s=time.perf_counter() - start
    )
    log.info("%s in %.1fs", report, report.time_s)
    return report
