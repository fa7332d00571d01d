"""BatchNorm batch statistics in one read of the input: a Triton kernel for the Adapt BN pass on CUDA.

PyTorch's ``torch.batch_norm_stats`` runs Welford's update, a division per value, in one thread block
per channel. :func:`chunk_stats` instead cuts each ``(sample, channel)`` run of contiguous values into
chunks of at most ``CHUNK`` values; one Triton program loads a chunk once and takes its mean and
centred sum of squares from registers (two passes over registers, one over memory). The chunks'
statistics come out as ``torch.batch_norm_gather_stats_with_counts`` wants those of the processes of
a SyncBatchNorm, which combines them (:class:`kit.adapt_bn.SplitForward` with
``kit.adapt_bn.STATS_KERNEL = "triton"``).

Triton comes with PyTorch's CUDA builds on Linux; it is imported on first use only. With
``TRITON_INTERPRET=1`` in the environment the kernel runs on CPU tensors (the tests do that).
"""

from __future__ import annotations

import functools

import torch

# values one program reads: a power of two, large enough to amortise a program, small enough that
# the chunk stays in registers (16 fp32 values per thread with 8 warps)
CHUNK = 4096


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def chunk_stats_kernel(x_ptr, mean_ptr, invstd_ptr, values, channels, chunks, eps, BLOCK: tl.constexpr):
        # program (row, j): chunk j of row = n * channels + c, i.e. of values [j*BLOCK, (j+1)*BLOCK)
        row = tl.program_id(0)
        j = tl.program_id(1)
        offsets = j * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < values
        x = tl.load(x_ptr + row.to(tl.int64) * values + offsets, mask=inside, other=0.0).to(tl.float32)
        count = tl.minimum(values - j * BLOCK, BLOCK).to(tl.float32)
        mean = tl.sum(x, axis=0) / count
        centred = tl.where(inside, x - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / count  # biased, as batch_norm_stats gives it
        # output (n * chunks + j, c): chunk j of every sample stands where a process would
        out = (row // channels * chunks + j) * channels + row % channels
        tl.store(mean_ptr + out, mean)
        tl.store(invstd_ptr + out, 1.0 / tl.sqrt(var + eps))

    return chunk_stats_kernel


def chunk_size(values: int) -> int:
    """Values per chunk for runs of ``values``: the smallest power of two holding a run, at most CHUNK."""
    return min(CHUNK, 1 << max(values - 1, 0).bit_length())


def chunk_counts(shape, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(N * J,)`` values per chunk of a contiguous input of ``shape`` ``(N, C, ...)``, in the order of
    :func:`chunk_stats`'s rows: sample by sample, chunk ``j`` of ``J`` within each."""
    n, values = shape[0], torch.Size(shape[2:]).numel()
    block = chunk_size(values)
    per_sample = [min(block, values - j) for j in range(0, values, block)]
    return torch.tensor(per_sample * n, dtype=dtype, device=device)


def chunk_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and ``1 / sqrt(biased var + eps)`` of each chunk of a contiguous ``(N, C, ...)`` input, as
    two float32 ``(N * J, C)`` tensors, ``J`` chunks per ``(sample, channel)`` run (counts:
    :func:`chunk_counts`). Feed them to ``torch.batch_norm_gather_stats_with_counts`` for the
    channels' statistics."""
    if not x.is_contiguous() or x.dim() < 2:
        raise ValueError(f"chunk_stats needs a contiguous (N, C, ...) input, got shape {tuple(x.shape)}")
    n, c = x.shape[:2]
    values = x[0, 0].numel() if n and c else 0
    if values == 0:
        raise ValueError(f"chunk_stats needs at least one value per sample and channel, got shape {tuple(x.shape)}")
    block = chunk_size(values)
    chunks = -(-values // block)
    mean = torch.empty((n * chunks, c), dtype=torch.float32, device=x.device)
    invstd = torch.empty_like(mean)
    _kernel()[(n * c, chunks)](x, mean, invstd, values, c, chunks, eps, BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return mean, invstd
