"""kit.adapt_bn: BatchNorm statistics re-estimated as true batch averages, nothing else touched."""

from __future__ import annotations

import copy
import importlib.util
import logging

import pytest
import torch
import torch.nn as nn

import kit.adapt_bn
from kit.adapt_bn import NO_BN_WARNING, SplitForward, adapt_bn, bn_layers, split_factor

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class TinyCNN(nn.Module):
    """(B, 3, T, H, W) -> (B, 3) with BatchNorm, a LayerNorm-free head and dropout between the convs."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv3d(3, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU())
        self.drop = nn.Dropout(0.5)  # must be off during Adapt BN or the next BN sees noise
        self.block2 = nn.Sequential(nn.Conv3d(6, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))

    def forward(self, x):
        x = self.block2(self.drop(self.block1(x)))
        return self.head(x.mean(dim=(2, 3, 4)))


class NoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(3)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        return self.head(self.norm(x.mean(dim=(2, 3, 4))))


def batches(n=5, b=4, *, seed=0, shift=2.0):
    g = torch.Generator().manual_seed(seed)
    return [{"video": torch.randn(b, 3, 4, 8, 8, generator=g) * 3 + shift, "label": torch.zeros(b, dtype=torch.int64),
             "bad": []} for _ in range(n)]


def direct_stats(model, videos):
    """Per BN layer: the average over batches of the batch mean and unbiased batch variance of its input."""
    net = copy.deepcopy(model).eval()
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in layers:
        bn.train()  # normalise with batch statistics, as the adaptation pass does
    seen = {bn: [] for bn in layers}
    hooks = [bn.register_forward_pre_hook(lambda m, inp: seen[m].append(inp[0].detach())) for bn in layers]
    with torch.no_grad():
        for v in videos:
            net(v)
    for h in hooks:
        h.remove()
    out = []
    for bn in layers:
        dims = [d for d in range(seen[bn][0].ndim) if d != 1]
        means = torch.stack([x.mean(dim=dims) for x in seen[bn]])
        vars_ = torch.stack([x.var(dim=dims, unbiased=True) for x in seen[bn]])
        out.append((means.mean(0), vars_.mean(0)))
    return out


def test_adapt_bn_sets_true_batch_averages_and_touches_nothing_else():
    torch.manual_seed(0)
    model = TinyCNN()
    model.train()
    model.head.eval()  # a mixed-mode model: every module's mode must come back as it was
    data = batches(5)
    expected = direct_stats(model, [b["video"] for b in data[:3]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [bn.momentum for bn in bn_layers(model)]

    report = adapt_bn(model, data, num_batches=3, device="cpu")

    assert (report.bn_layers, report.batches, report.clips, report.warning) == (3, 3, 12, None)
    for bn, (mean, var) in zip(bn_layers(model), expected, strict=True):
        assert torch.allclose(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        assert torch.allclose(bn.running_var, var, rtol=1e-5, atol=1e-6)
        assert int(bn.num_batches_tracked) == 3
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for k, v in model.state_dict().items():
        if not k.endswith(stats):
            assert torch.equal(v, before[k]), k
        elif k.endswith("running_mean"):
            assert not torch.equal(v, before[k]), k  # the statistics really moved
    assert [bn.momentum for bn in bn_layers(model)] == momenta
    assert model.training and model.block1.training and model.drop.training and not model.head.training
    assert not model.head[1].training


def test_samples_are_flattened_and_all_bad_batches_skipped():
    torch.manual_seed(0)
    model = TinyCNN()
    data = batches(2, b=2)
    expected = direct_stats(model, [b["video"] for b in data])
    with_samples = [{"video": data[0]["video"].view(1, 2, 3, 4, 8, 8), "bad": []},  # (B, S, C, T, H, W)
                    {"video": None, "bad": ["x.mp4"]},
                    {"video": data[1]["video"], "bad": []}]
    report = adapt_bn(model, with_samples, num_batches=10, device="cpu")
    assert (report.batches, report.clips) == (2, 4)
    for bn, (mean, var) in zip(bn_layers(model), expected, strict=True):
        assert torch.allclose(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        assert torch.allclose(bn.running_var, var, rtol=1e-5, atol=1e-6)


def test_model_without_batchnorm_is_reported_not_silently_skipped(caplog):
    model = NoBN()
    before = copy.deepcopy(model.state_dict())
    with caplog.at_level(logging.WARNING, logger="kit.adapt_bn"):
        report = adapt_bn(model, batches(2), device="cpu")
    assert report.warning == NO_BN_WARNING and report.bn_layers == 0 and report.batches == 0
    assert "no BatchNorm" in str(report)
    assert any(r.levelno == logging.WARNING and "no BatchNorm" in r.getMessage() for r in caplog.records)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_an_empty_loader_leaves_the_statistics_alone():
    model = TinyCNN()
    adapt_bn(model, batches(2), device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = adapt_bn(model, [{"video": None, "bad": ["a.mp4"]}], device="cpu")
    assert report.batches == 0 and "no usable batch" in report.warning
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_real_models_uniformer_adapts_with_drop_path_off_and_mvit_is_reported(caplog):
    from kit.models import create_model

    torch.manual_seed(0)
    uniformer = create_model("uniformer_tiny", num_classes=3, drop_path_rate=0.5).train()
    data = [{"video": torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(i)), "bad": []}
            for i in range(3)]
    expected = direct_stats(uniformer, [b["video"] for b in data])  # drop path off, as Adapt BN must do
    report = adapt_bn(uniformer, data, num_batches=3, device="cpu")
    assert report.bn_layers == len(bn_layers(uniformer)) > 0 and report.warning is None
    for bn, (mean, var) in zip(bn_layers(uniformer), expected, strict=True):
        assert torch.allclose(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        assert torch.allclose(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert uniformer.training

    mvit = create_model("mvit_tiny", num_classes=3)
    with caplog.at_level(logging.WARNING, logger="kit.adapt_bn"):
        report = adapt_bn(mvit, data, device="cpu")
    assert report.warning == NO_BN_WARNING and "MViT" in report.warning


def test_batch_counters_set_once_and_restored_when_the_loader_fails():
    torch.manual_seed(0)
    model = TinyCNN()
    counters = [bn.num_batches_tracked for bn in bn_layers(model)]

    def failing():
        yield from batches(2)
        raise RuntimeError("decoder died")

    try:
        adapt_bn(model, failing(), num_batches=5, device="cpu")
    except RuntimeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("the loader's error must propagate")
    for bn, counter in zip(bn_layers(model), counters, strict=True):
        assert bn.num_batches_tracked is counter and int(counter) == 2  # the same buffer, 2 batches used
        assert bn.momentum == 0.1 and bn.training
    assert sum(k.endswith("num_batches_tracked") for k in model.state_dict()) == 3  # still saved


def test_split_factor_fills_the_blocks_with_pieces_that_divide_and_keep_enough_values():
    assert split_factor(8, 32 * 112 * 112, blocks=528) == 128  # 8 channels -> 1024 pieces of 3136 values
    assert split_factor(64, 8 * 56 * 56, blocks=528) == 8  # 16 cuts would leave 1568 < 2048 values a piece
    assert split_factor(2048, 8 * 7 * 7, blocks=528) == 1  # enough channels already
    assert split_factor(8, 4096, blocks=528) == 2
    assert split_factor(3, 35 * 2048, blocks=528, min_values=16) == 256  # 768 pieces
    assert split_factor(1, 4 * 15, blocks=528, min_values=1) == 4  # only powers of two that divide
    assert split_factor(3, 9 * 11, blocks=528, min_values=1) == 1  # odd: no cut at all
    assert split_factor(8, 1 << 20, blocks=0) == 1
    kit.adapt_bn.SPLIT_MIN_VALUES, kept = 64, kit.adapt_bn.SPLIT_MIN_VALUES
    try:
        assert split_factor(8, 4096, blocks=528) == 64  # the module's minimum, read at call time
    finally:
        kit.adapt_bn.SPLIT_MIN_VALUES = kept


def test_adapt_bn_puts_every_forward_back_when_the_loader_fails():
    torch.manual_seed(0)
    model = TinyCNN()
    expected = direct_stats(model, [b["video"] for b in batches(2)])
    seen = []

    def failing():
        for b in batches(2):
            seen.append(type(model.block1[1].forward).__name__)
            yield b
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError, match="decoder died"):
        adapt_bn(model, failing(), num_batches=5, device="cpu")
    assert seen == ["SplitForward", "SplitForward"]
    assert all("forward" not in vars(m) for m in model.modules())
    for bn, (mean, var) in zip(bn_layers(model), expected, strict=True):
        assert torch.allclose(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        assert torch.allclose(bn.running_var, var, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
def test_split_forward_on_the_cpu_is_the_layers_own_forward_checked_once_per_shape(channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 16, 16, generator=g) * 3 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    bn, ref = nn.BatchNorm3d(4), nn.BatchNorm3d(4)
    nn.init.normal_(ref.weight), nn.init.normal_(ref.bias)
    bn.load_state_dict(ref.state_dict())
    forward = SplitForward(bn, 10**6)  # no cuts off CUDA, however many blocks
    with torch.no_grad():
        for momentum in (0.3, 1.0):  # read from the layer at each call, as adapt_bn sets it per batch
            ref.momentum = bn.momentum = momentum
            assert torch.equal(forward(x), ref(x))
    for name in ("running_mean", "running_var"):
        assert torch.equal(getattr(bn, name), getattr(ref, name)), name
    assert forward.plans == {x.shape: (1,)}
    # what the layer's own forward refuses, refused the same way
    with pytest.raises(ValueError, match="expected 5D input"):
        forward(torch.randn(2, 4, 16, 16))
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\(1, 4, 1, 1, 1\)"):
        forward(torch.randn(1, 4, 1, 1, 1))


def test_adapt_bn_through_split_forward_equals_the_layers_own_forward_on_the_cpu(monkeypatch):
    torch.manual_seed(0)
    model = TinyCNN()
    own = copy.deepcopy(model)
    data = batches(3)
    adapt_bn(model, data, device="cpu")
    monkeypatch.setattr(kit.adapt_bn, "_split_layers", lambda layers, device: [])
    adapt_bn(own, data, device="cpu")
    for (name, got), want in zip(model.state_dict().items(), own.state_dict().values(), strict=True):
        assert torch.equal(got, want), name


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(
    "blocks, kernel",
    [(10**6, "pytorch"), (0, "pytorch"), (0, "triton")],
    ids=["as many cuts as the values allow (4 a channel)", "no cut", "Triton's chunks"],
)
def test_split_forward_equals_batchnorm_in_training_mode_on_cuda(dtype, affine, blocks, kernel):
    if kernel == "triton":
        pytest.importorskip("triton")
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 5, 8, 32, 32, generator=g) * 2 + 3).cuda().to(dtype)
    x[:, 1] = x[:, 1] * 50 + 400  # a channel whose mean lies far from 0
    ref = nn.BatchNorm3d(5, affine=affine).cuda()
    if affine:
        nn.init.normal_(ref.weight), nn.init.normal_(ref.bias)
    ref.running_mean.uniform_(-1, 1)
    ref.running_var.uniform_(0.5, 2)
    bn = copy.deepcopy(ref)
    ref.num_batches_tracked = bn.num_batches_tracked = None
    forward = SplitForward(bn, blocks, kernel)
    with torch.no_grad():
        for momentum in (0.3, 0.5):  # read from the layer at each call, as adapt_bn sets it per batch
            ref.momentum = bn.momentum = momentum
            want = ref(x)
            got = forward(x)
    (plan,) = forward.plans.values()
    if kernel == "triton":
        assert plan[0] == "triton" and plan[1].tolist() == [4096] * 6  # 8192 values a run: 2 chunks
    elif blocks:
        assert plan[0] == 4 and plan[-1].tolist() == [3 * 2048] * 4
    else:
        assert plan == (1,)
    assert got.dtype == want.dtype == dtype
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    assert torch.allclose(got.float(), want.float(), **tol)
    assert torch.allclose(bn.running_mean, ref.running_mean, rtol=1e-5, atol=1e-4)
    assert torch.allclose(bn.running_var, ref.running_var, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_split_forward_gives_what_it_cannot_cut_to_pytorchs_kernel_and_rejects_one_value_per_channel():
    bn, ref = nn.BatchNorm3d(4).cuda(), nn.BatchNorm3d(4).cuda()
    x = torch.randn(2, 4, 6, 16, 16, device="cuda").transpose(3, 4)  # not contiguous
    forward = SplitForward(bn, 10**6)
    with torch.no_grad():
        assert torch.allclose(forward(x), ref(x), atol=1e-5)
    assert torch.allclose(bn.running_var, ref.running_var) and torch.allclose(bn.running_mean, ref.running_mean)
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\(1, 4, 1, 1, 1\)"):
        forward(torch.randn(1, 4, 1, 1, 1, device="cuda"))
    # float64 is not the Triton kernel's: PyTorch's batch_norm takes it
    bn, ref = nn.BatchNorm3d(4).cuda().double(), nn.BatchNorm3d(4).cuda().double()
    x = torch.randn(2, 4, 6, 16, 16, device="cuda", dtype=torch.float64)
    forward = SplitForward(bn, 0, "triton")
    with torch.no_grad():
        assert torch.allclose(forward(x), ref(x))
    assert list(forward.plans.values()) == [(1,)] and torch.allclose(bn.running_var, ref.running_var)


@needs_cuda
def test_adapt_bn_on_cuda_with_and_without_cuts_agrees_and_restores_the_layers():
    torch.manual_seed(0)
    model = TinyCNN().cuda()
    data = [{"video": torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(i)) + 1, "bad": []}
            for i in range(3)]
    whole = copy.deepcopy(model)
    kit.adapt_bn.SPLIT_BLOCKS_PER_SM, kept = 0, kit.adapt_bn.SPLIT_BLOCKS_PER_SM
    try:
        adapt_bn(whole, data, device="cuda", amp=False)
    finally:
        kit.adapt_bn.SPLIT_BLOCKS_PER_SM = kept
    nets = [model, copy.deepcopy(model)] if importlib.util.find_spec("triton") is not None else [model]
    adapt_bn(model, data, device="cuda", amp=False)
    if len(nets) == 2:  # the Triton kernel's chunks
        kit.adapt_bn.STATS_KERNEL, kept = "triton", kit.adapt_bn.STATS_KERNEL
        try:
            adapt_bn(nets[-1], data, device="cuda", amp=False)
        finally:
            kit.adapt_bn.STATS_KERNEL = kept
    for net in nets:
        for bn, ref in zip(bn_layers(net), bn_layers(whole), strict=True):
            assert torch.allclose(bn.running_mean, ref.running_mean, rtol=1e-4, atol=1e-5)
            assert torch.allclose(bn.running_var, ref.running_var, rtol=1e-4, atol=1e-5)
            assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.1
        assert all("forward" not in vars(m) for m in net.modules())


def test_an_unknown_stats_kernel_fails_before_any_batch_is_read(monkeypatch):
    monkeypatch.setattr(kit.adapt_bn, "STATS_KERNEL", "cudnn")
    model = TinyCNN()
    before = copy.deepcopy(model.state_dict())

    def loader():
        raise AssertionError("a batch was read")
        yield

    with pytest.raises(ValueError, match=r"STATS_KERNEL must be one of \('pytorch', 'triton'\), got 'cudnn'"):
        adapt_bn(model, loader(), device="cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_every_plain_batchnorm_layer_is_stood_in_for_and_triton_is_needed_on_cuda_only(monkeypatch):
    layers = bn_layers(TinyCNN())
    cuda = torch.device("cuda")  # _split_layers only reads the device's type
    monkeypatch.setattr(kit.adapt_bn, "STATS_KERNEL", "triton")
    monkeypatch.setattr(kit.adapt_bn, "SPLIT_BLOCKS_PER_SM", 0)
    if importlib.util.find_spec("triton") is not None:
        assert kit.adapt_bn._split_layers(layers, cuda) == layers
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match='STATS_KERNEL = "triton" needs the triton package'):
        kit.adapt_bn._split_layers(layers, cuda)
    # off CUDA the kernel is never used, so it is not needed; every layer still gets the lean forward
    assert kit.adapt_bn._split_layers(layers, torch.device("cpu")) == layers
    monkeypatch.setattr(kit.adapt_bn, "STATS_KERNEL", "pytorch")
    assert kit.adapt_bn._split_layers(layers, cuda) == layers
    sync = nn.SyncBatchNorm(4)  # its own forward: left to it
    assert kit.adapt_bn._split_layers([*layers, sync], torch.device("cpu")) == layers
