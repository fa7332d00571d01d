"""kit.bn_stats: per-chunk BatchNorm statistics from a Triton kernel: on the GPU where there is one, else
in Triton's interpreter on the CPU (tests/conftest.py sets TRITON_INTERPRET=1 when CUDA is absent)."""

from __future__ import annotations

import os

import pytest
import torch

from kit.bn_stats import CHUNK, chunk_counts, chunk_size, chunk_stats

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    """Where the kernel runs: the GPU, or the CPU through Triton's interpreter."""
    pytest.importorskip("triton")
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and Triton's interpreter is off")
    return DEVICE


def test_chunk_size_is_the_run_rounded_up_to_a_power_of_two_at_most_chunk():
    assert chunk_size(1) == 1
    assert chunk_size(392) == 512
    assert chunk_size(512) == 512
    assert chunk_size(CHUNK) == CHUNK
    assert chunk_size(CHUNK + 1) == CHUNK
    assert chunk_size(401408) == CHUNK


def test_chunk_counts_list_each_samples_chunks_in_turn():
    counts = chunk_counts((2, 3, 2, 50, 50))  # 5000 values a run: a full chunk and 904 values
    assert counts.tolist() == [CHUNK, 5000 - CHUNK] * 2
    assert chunk_counts((3, 8, 2, 7, 7)).tolist() == [98.0] * 3
    assert chunk_counts((2, 4, 8), dtype=torch.float64).dtype == torch.float64


def combine(mean, invstd, counts, eps):
    """The channels' mean and biased variance from their chunks' (float64, as Chan et al. combine)."""
    mean, counts = mean.double(), counts.double()[:, None]
    var = 1 / invstd.double() ** 2 - eps
    total = counts.sum(0)
    grand = (counts * mean).sum(0) / total
    return grand, (counts * (var + (mean - grand) ** 2)).sum(0) / total


@pytest.mark.parametrize(
    "shape",
    [(4, 3, 2, 5, 7), (2, 2, 4, 32, 32), (3, 2, 5, 30, 31), (2, 5, 1)],
    ids=["short runs", "runs of exactly CHUNK", "runs of 1.1 CHUNK", "one value a run"],
)
def test_chunk_stats_match_the_channels_statistics(device, shape):
    g = torch.Generator().manual_seed(0)
    # channels far from 0 with unequal spreads: a variance from E[x^2] - E[x]^2 in float32 would show
    x = torch.randn(shape, generator=g) * torch.arange(1, shape[1] + 1).view(1, -1, *[1] * (len(shape) - 2)) + 50
    eps = 1e-5
    mean, invstd = (t.cpu() for t in chunk_stats(x.to(device), eps))
    counts = chunk_counts(x.shape)
    assert mean.shape == invstd.shape == (len(counts), shape[1]) and mean.dtype == torch.float32
    ref = x.double().transpose(0, 1).reshape(shape[1], -1)
    grand, var = combine(mean, invstd, counts, eps)
    torch.testing.assert_close(grand, ref.mean(1), rtol=0, atol=1e-5)
    if len(shape) > 2:
        torch.testing.assert_close(var, ref.var(1, unbiased=False), rtol=1e-4, atol=1e-4)
    # and each chunk's own statistics: chunk j of sample n of channel c
    values = x[0, 0].numel()
    block = chunk_size(values)
    chunks = -(-values // block)
    run = x.reshape(shape[0], shape[1], values)[1, shape[1] - 1, (chunks - 1) * block:].double()
    row = chunks * 2 - 1  # sample 1's last chunk
    assert mean[row, -1].item() == pytest.approx(run.mean().item(), abs=1e-5)
    assert invstd[row, -1].item() == pytest.approx((run.var(unbiased=False) + eps).rsqrt().item(), rel=1e-4)


def test_chunk_stats_read_bfloat16_in_float32(device):
    x = (torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 + 3).bfloat16()
    mean, invstd = (t.cpu() for t in chunk_stats(x.to(device), 1e-5))
    grand, var = combine(mean, invstd, chunk_counts(x.shape), 1e-5)
    ref = x.double().transpose(0, 1).reshape(3, -1)
    assert mean.dtype == torch.float32
    torch.testing.assert_close(grand, ref.mean(1), rtol=0, atol=1e-5)
    torch.testing.assert_close(var, ref.var(1, unbiased=False), rtol=1e-4, atol=1e-5)


def test_chunk_stats_reject_what_they_cannot_read():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="contiguous"):
        chunk_stats(x.transpose(2, 3), 1e-5)
    with pytest.raises(ValueError, match="at least one value"):
        chunk_stats(torch.randn(2, 3, 0), 1e-5)
