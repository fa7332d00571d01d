"""MViT: PySlowFast golden through load_pretrained, block table, converter, position resize."""

from pathlib import Path

import pytest
import torch

from kit.models import create_model, has_batchnorm, load_pretrained
from kit.models.mvit import convert_pyslowfast_mvit, is_pyslowfast_mvit, resize_pos_embed

FIXTURES = Path(__file__).parent / "fixtures"
ARCH = (
    "depth",
    "embed_dim",
    "num_heads",
    "dim_mul",
    "head_mul",
    "pool_q_stride",
    "pool_kv_stride_adaptive",
    "frames",
    "crop",
    "num_classes",
)


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIXTURES / "pyslowfast_mvit_tiny_golden.pt", weights_only=True)


def _arch(golden, **changes):
    return {**{k: golden["config"][k] for k in ARCH}, **changes}


def _meta_state(rows, column):
    # tensors of the listed shapes on the meta device: keys/shapes only, no memory
    return {
        r[column]: torch.empty(*map(int, r[column + 1].split("x")), device="meta") for r in rows
    }


def _tsv(name):
    return [line.split("\t") for line in (FIXTURES / name).read_text().splitlines()]


def test_golden_logits_via_load_pretrained(golden):
    model = create_model("mvit_b", **_arch(golden)).eval()
    report = load_pretrained(model, {"model_state": golden["state_dict"]})
    assert report.converted_from == "pyslowfast_mvit"
    assert not report.dropped and not report.inflated and not report.interpolated
    with torch.no_grad():
        logits = model(golden["input"])
    torch.testing.assert_close(logits, golden["logits"], atol=1e-5, rtol=0)
    # pre-softmax scores: rows are not probability distributions
    assert not torch.allclose(logits.sum(1), torch.ones(2), atol=1e-3)


def test_block_settings_match_pyslowfast_table(golden):
    model = create_model("mvit_b", **_arch(golden))
    for cnf, ref in zip(model.block_settings, golden["config"]["blocks"], strict=True):
        assert (cnf.input_channels, cnf.output_channels, cnf.num_heads) == (
            ref["dim_in"],
            ref["dim_out"],
            ref["num_heads"],
        )
        assert cnf.kernel_kv == ref["kernel_kv"] and cnf.stride_kv == ref["stride_kv"]
        assert cnf.kernel_q == (ref["kernel_q"] or []) and cnf.stride_q == (ref["stride_q"] or [])


def test_mvit_b_is_the_32x3_model():
    rows = _tsv("pyslowfast_mvit_b32_to_torchvision_keys.tsv")
    with torch.device("meta"):
        model = create_model("mvit_b", num_classes=11)
    got = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    assert got == {r[2]: r[3] for r in rows}


@pytest.mark.parametrize(
    "listing",
    ["pyslowfast_mvit_b32_to_torchvision_keys.tsv", "pyslowfast_mvit_b32_keys_separate_qkv.tsv"],
)
def test_converter_maps_pyslowfast_keys_to_torchvision(listing):
    source = _meta_state(_tsv(listing), 0)
    assert is_pyslowfast_mvit(source)
    converted = convert_pyslowfast_mvit(source)
    expected = {r[2]: r[3] for r in _tsv("pyslowfast_mvit_b32_to_torchvision_keys.tsv")}
    assert {k: "x".join(map(str, v.shape)) for k, v in converted.items()} == expected


def test_separate_qkv_checkpoint_gives_the_same_model(golden):
    fused = golden["state_dict"]
    separate = {}
    for key, value in fused.items():
        if ".attn.qkv." in key:
            for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                separate[key.replace(".qkv.", f".{name}.")] = part
        else:
            separate[key] = value
    a, b = convert_pyslowfast_mvit(fused), convert_pyslowfast_mvit(separate)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight"):
        convert_pyslowfast_mvit(
            {k: v for k, v in separate.items() if k != "blocks.0.attn.k.weight"}
        )
    with pytest.raises(ValueError, match="rel_pos_h"):
        convert_pyslowfast_mvit({**fused, "blocks.0.attn.rel_pos_h": torch.zeros(3, 4)})


def test_other_frame_count_interpolates_temporal_position(golden):
    model = create_model("mvit_b", **_arch(golden, frames=16)).eval()
    report = load_pretrained(model, golden["state_dict"])
    assert report.interpolated == ["pos_encoding.temporal_pos"]
    assert model.pos_encoding.temporal_pos.shape == (8, 16)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 64, 64)).shape == (1, 11)
    with pytest.raises(ValueError, match="built for"):
        model(golden["input"])  # 8 frames into a 16-frame model


def test_resize_pos_embed_keeps_a_constant_table_and_endpoints():
    ramp = torch.linspace(0, 1, 4)[:, None].expand(4, 3)
    resized = resize_pos_embed("pos_encoding.temporal_pos", ramp, torch.Size([8, 3]))
    assert resized.shape == (8, 3)
    assert torch.all(resized[1:] >= resized[:-1])  # order in time is kept
    const = torch.full((16, 5), 0.7)
    torch.testing.assert_close(
        resize_pos_embed("pos_encoding.spatial_pos", const, torch.Size([64, 5])),
        torch.full((64, 5), 0.7),
    )


def test_mvit_has_no_batchnorm():
    assert not has_batchnorm(create_model("mvit_tiny"))
    assert has_batchnorm(create_model("uniformer_tiny"))


def test_pyslowfast_head_with_other_class_count_is_dropped(golden):
    model = create_model("mvit_b", **_arch(golden, num_classes=5))
    report = load_pretrained(model, golden["state_dict"])
    assert sorted(report.dropped) == ["head.1.bias", "head.1.weight"]
    torch.testing.assert_close(model.norm.weight, golden["state_dict"]["norm.weight"])
