"""UniFormer: official key names and shapes, golden parity, attention paths, checkpointing, std flag."""

from pathlib import Path

import pytest
import torch

from kit.models import create_model
from kit.models.uniformer import Uniformer

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN_ARCH = (
    "depth",
    "embed_dim",
    "head_dim",
    "mlp_ratio",
    "qkv_bias",
    "num_classes",
    "std",
    "in_chans",
    "qk_scale",
)


def _read_keys(name):
    rows = [line.rstrip("\n").split("\t") for line in (FIXTURES / name).read_text().splitlines()]
    return [(k, s) for k, s in rows]


def _shape(t):
    return "scalar" if t.dim() == 0 else "x".join(map(str, t.shape))


@pytest.mark.parametrize("name", ["uniformer_s", "uniformer_b"])
def test_state_dict_matches_official_keys_and_shapes(name):
    with torch.device("meta"):  # full-size shapes without allocating the weights
        model = create_model(name, num_classes=11)
    got = [(k, _shape(v)) for k, v in model.state_dict().items()]
    assert got == _read_keys(f"{name}_keys.tsv")


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIXTURES / "uniformer_tiny_golden.pt", weights_only=True)


def _golden_model(golden):
    model = Uniformer(**{k: golden["config"][k] for k in GOLDEN_ARCH})
    model.load_state_dict(golden["state_dict"])
    return model.eval()


@pytest.mark.parametrize("impl", ["sdpa", "plain"])
def test_golden_logits(golden, impl):
    model = _golden_model(golden)
    model.set_attn_impl(impl)
    with torch.no_grad():
        logits = model(golden["input"])
    torch.testing.assert_close(logits, golden["logits"], atol=1e-5, rtol=0)


def test_sdpa_and_plain_give_same_gradients(golden):
    model = _golden_model(golden).train()
    grads = {}
    for impl in ("sdpa", "plain"):
        model.zero_grad()
        model.set_attn_impl(impl)
        model(golden["input"]).square().sum().backward()
        grads[impl] = model.blocks3[0].attn.qkv.weight.grad.clone()
    torch.testing.assert_close(grads["sdpa"], grads["plain"], atol=1e-5, rtol=1e-4)


def test_grad_checkpointing_keeps_outputs_and_gradients(golden):
    model = _golden_model(
        golden
    )  # eval mode: BN uses running stats, so both passes see the same function
    x = golden["input"]
    outs, grads = [], []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        out = model(x)
        out.sum().backward()
        outs.append(out.detach())
        grads.append(model.blocks1[0].attn.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_std_flag_uses_temporal_kernel_3_in_later_patch_embeds():
    plain = create_model("uniformer_tiny", std=False)
    std = create_model("uniformer_tiny", std=True)
    assert plain.patch_embed2.proj.weight.shape[2:] == (1, 2, 2)
    assert std.patch_embed2.proj.weight.shape[2:] == (3, 2, 2)
    assert std.patch_embed1.proj.weight.shape[2:] == (3, 4, 4)
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert std.forward_features(x).shape == plain.forward_features(x).shape == (1, 128, 4, 1, 1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="head_dim=48"):
        create_model("uniformer_tiny", head_dim=48)
    with pytest.raises(ValueError, match="attn_impl"):
        create_model("uniformer_tiny", attn_impl="flash")
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        create_model("uniformer_tiny")(torch.randn(1, 3, 32, 32))
