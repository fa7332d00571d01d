"""SlowFast: PySlowFast golden parity, state-dict names, pathway split, shapes, clear errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.utils.checkpoint

from kit.models import create_model, list_models, load_pretrained, slowfast

FIXTURES = Path(__file__).parent / "fixtures"
ARCH_KEYS = (
    "width_per_group", "alpha", "beta_inv", "fusion_conv_channel_ratio", "fusion_kernel_size",
    "num_block_temp_kernel", "num_classes", "frames", "crop",
)


def read_keys(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))))
    return rows


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIXTURES / "pyslowfast_slowfast_tiny_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def golden_model(golden):
    cfg = golden["config"]
    assert cfg["depth"] == 50 and cfg["num_groups"] == 1
    model = create_model("slowfast_r50", **{k: cfg[k] for k in ARCH_KEYS})
    model.load_state_dict(golden["state_dict"], strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def golden_features(golden, golden_model):
    with torch.no_grad():
        return golden_model.forward_pathways(
            slowfast.pack_pathway(golden["input"], alpha=golden["config"]["alpha"])
        )


def test_golden_logits_match_pyslowfast(golden, golden_model):
    with torch.no_grad():
        logits = golden_model(golden["input"])
    assert logits.shape == golden["logits"].shape == (2, 11)
    torch.testing.assert_close(logits, golden["logits"], atol=1e-4, rtol=0)


def test_golden_slow_indices_and_widths(golden, golden_features):
    cfg = golden["config"]
    assert slowfast.slow_frame_indices(cfg["frames"], alpha=cfg["alpha"]).tolist() == cfg[
        "slow_input_frame_indices"
    ]
    slow, fast = golden_features
    assert [slow.shape[1], fast.shape[1]] == cfg["head_in_features_slow_fast"]


def test_load_pretrained_wrapped_checkpoint_with_other_head(golden):
    # an official .pyth keeps weights under "model_state"; a Kinetics head has another class count
    cfg = {k: golden["config"][k] for k in ARCH_KEYS if k != "num_classes"}
    model = create_model("slowfast_r50", num_classes=5, **cfg)
    head_init = model.head.projection.weight.clone()
    report = load_pretrained(model, {"model_state": golden["state_dict"]})
    assert sorted(report.dropped) == ["head.projection.bias", "head.projection.weight"]
    assert not report.inflated
    state = model.state_dict()
    for key, value in golden["state_dict"].items():
        if not key.startswith("head."):
            assert torch.equal(state[key], value), key
    assert torch.equal(model.head.projection.weight, head_init)


def test_global_pool_equals_pyslowfast_avgpool_on_golden_size(golden, golden_model, golden_features):
    head = golden_model.head
    assert head.pool_kernels == [tuple(k) for k in golden["config"]["head_pool_kernel_slow_fast"]]
    features = golden_features
    with torch.no_grad():
        # PySlowFast: stride-1 AvgPool3d, concat, Linear per position, then mean over positions
        pooled = [nn.AvgPool3d(k, stride=1)(f) for k, f in zip(head.pool_kernels, features, strict=True)]
        assert all(p.shape[2:] == (1, 1, 1) for p in pooled)
        reference = head.projection(torch.cat(pooled, 1).permute(0, 2, 3, 4, 1)).mean((1, 2, 3))
        torch.testing.assert_close(head(features), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("fixture", "overrides"),
    [
        ("pyslowfast_slowfast_r101_keys.tsv", {}),
        (
            "pyslowfast_slowfast_r101_50_50_keys.tsv",
            {"num_block_temp_kernel": [[3, 3], [4, 4], [6, 6], [3, 3]]},
        ),
    ],
)
def test_r101_state_dict_names_and_shapes(fixture, overrides):
    with torch.device("meta"):  # shapes only: skip allocating and initialising 62M parameters
        model = create_model("slowfast_r101", num_classes=11, **overrides)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == read_keys(FIXTURES / fixture)


def test_r50_default_layout():
    with torch.device("meta"):
        model = create_model("slowfast_r50", num_classes=11)
    sd = model.state_dict()
    assert sum(k.startswith("s4.pathway0_res") and k.endswith("branch2.a.weight") for k in sd) == 6
    assert sd["s1_fuse.conv_f2s.weight"].shape == (16, 8, 7, 1, 1)
    assert sd["head.projection.weight"].shape == (11, 2048 + 256)


@pytest.mark.parametrize(
    ("frames", "slow"),
    [(8, [0, 7]), (16, [0, 5, 10, 15]), (32, [0, 4, 8, 13, 17, 22, 26, 31])],
)
def test_pathway_split(frames, slow):
    # each frame filled with its own index, so the split shows which frames it took
    video = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1).expand(2, 3, frames, 4, 4)
    slow_clip, fast_clip = slowfast.pack_pathway(video, alpha=4)
    assert slowfast.slow_frame_indices(frames, alpha=4).tolist() == slow
    assert slow_clip.shape == (2, 3, frames // 4, 4, 4)
    assert slow_clip[0, 0, :, 0, 0].tolist() == slow
    assert fast_clip.shape == (2, 3, frames, 4, 4)
    assert torch.equal(fast_clip, video)


@pytest.mark.parametrize("frames", [8, 16, 32])
def test_tiny_shapes_for_8_16_32_frames(frames):
    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=11).eval()
    video = torch.randn(2, 3, frames, 64, 64)
    with torch.no_grad():
        slow, fast = model.forward_pathways(slowfast.pack_pathway(video, alpha=4))
        logits = model(video)
    assert slow.shape == (2, 256, frames // 4, 2, 2)
    assert fast.shape == (2, 32, frames, 2, 2)
    assert logits.shape == (2, 11)


def test_tiny_forward_backward_and_grad_checkpointing(monkeypatch):
    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=5).train()
    video, labels = torch.randn(2, 3, 8, 32, 32), torch.tensor([1, 3])
    ckpt = copy.deepcopy(model)
    torch.manual_seed(1)  # same head dropout mask in both runs
    nn.functional.cross_entropy(model(video), labels).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the loss reaches both pathways' stems (the fast one only through the lateral convs and head)
    assert grads["s1.pathway0_stem.conv.weight"].abs().sum() > 0
    assert grads["s1.pathway1_stem.conv.weight"].abs().sum() > 0

    ckpt.set_grad_checkpointing(True)
    calls = []

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return torch.utils.checkpoint.checkpoint(*args, **kwargs)

    monkeypatch.setattr(slowfast, "checkpoint", counting_checkpoint)
    torch.manual_seed(1)
    nn.functional.cross_entropy(ckpt(video), labels).backward()
    assert len(calls) == 9  # the stem, res2..res5 and the four lateral fusions
    for name, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_only_batchnorm_normalisation():
    model = create_model("slowfast_tiny", num_classes=3)
    norms = [m for m in model.modules() if "Norm" in type(m).__name__]
    assert norms and all(isinstance(m, nn.BatchNorm3d) and m.eps == 1e-5 for m in norms)


def test_eval_output_is_logits_not_probabilities():
    torch.manual_seed(0)
    model = create_model("slowfast_tiny", num_classes=4).eval()
    with torch.no_grad():
        nn.init.normal_(model.head.projection.weight, std=1.0)
        logits = model(torch.randn(3, 3, 8, 32, 32))
    assert (logits < 0).any()  # a softmax output would be all positive and sum to 1


def test_clear_errors():
    with pytest.raises(ValueError, match=r"width_per_group=4 must be a multiple of beta_inv=8"):
        create_model("slowfast_r50", width_per_group=4)
    with pytest.raises(ValueError, match=r"frames=10 must be divisible by alpha=4"):
        create_model("slowfast_tiny", frames=10)
    with pytest.raises(ValueError, match=r"num_block_temp_kernel\[2\]=\[7, 7\].*res4 has 6 blocks"):
        create_model("slowfast_r50", num_block_temp_kernel=[[3, 3], [4, 4], [7, 7], [3, 3]])
    with pytest.raises(ValueError, match="fusion_kernel_size must be odd"):
        create_model("slowfast_tiny", fusion_kernel_size=4)
    with pytest.raises(TypeError, match="drop_path_rate"):
        create_model("slowfast_tiny", drop_path_rate=0.1)
    model = create_model("slowfast_tiny", num_classes=3)
    with pytest.raises(ValueError, match=r"divisible by alpha=4, got T=10"):
        model(torch.randn(1, 3, 10, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\) tensor, got shape \(3, 8, 32, 32\)"):
        model(torch.randn(3, 8, 32, 32))


def test_registered_names():
    assert {"slowfast_r50", "slowfast_r101", "slowfast_tiny"} <= set(list_models("slowfast_*"))
