"""load_pretrained: wrapped dicts, prefixes, head drop, inflation, kit checkpoints, named failures."""

from pathlib import Path

import pytest
import torch

from kit.models import PretrainedError, create_model, load_pretrained

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = dict(depth=[1, 1, 1, 1], embed_dim=[16, 16, 32, 32], head_dim=16)


def _model(num_classes=11, seed=0):
    torch.manual_seed(seed)
    return create_model("uniformer_tiny", num_classes=num_classes, **SMALL)


def _same(model, state):
    got = model.state_dict()
    return all(torch.equal(got[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model": sd},
        lambda sd: {"model_state": sd, "epoch": 3},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {f"backbone.{k}": v for k, v in sd.items()},
    ],
)
def test_wrapped_and_prefixed_state_dicts_load_exactly(wrap):
    source = _model(seed=1).state_dict()
    model = _model(seed=2)
    report = load_pretrained(model, wrap(source))
    assert _same(model, source)
    assert sorted(report.loaded) == sorted(source)
    assert not (report.dropped or report.inflated or report.converted_from)


def test_kit_checkpoint_file(tmp_path):
    source = _model(seed=1)
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "model": source.state_dict(),
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 4,
            "config": {"lr": 1e-4},
        },
        path,
    )
    model = _model(seed=2)
    load_pretrained(model, path)
    assert _same(model, source.state_dict())


def test_head_with_other_class_count_is_dropped():
    source = _model(num_classes=400, seed=1).state_dict()
    model = _model(num_classes=11, seed=2)
    head_before = model.head.weight.clone()
    report = load_pretrained(model, source)
    assert sorted(report.dropped) == ["head.bias", "head.weight"]
    assert "dropped 2 (head.weight, head.bias)" in str(report)
    assert torch.equal(model.head.weight, head_before)
    assert _same(model, {k: v for k, v in source.items() if not k.startswith("head.")})


def test_2d_weights_are_inflated_over_time():
    source = _model(seed=1).state_dict()
    image = dict(source)
    for key in ("patch_embed1.proj.weight", "blocks1.0.pos_embed.weight", "blocks1.0.attn.weight"):
        image[key] = source[key][:, :, 0]  # (O, I, T, H, W) -> (O, I, H, W)
    model = _model(seed=2)
    report = load_pretrained(model, image)
    assert sorted(report.inflated) == [
        "blocks1.0.attn.weight",
        "blocks1.0.pos_embed.weight",
        "patch_embed1.proj.weight",
    ]
    w2d, w3d = image["patch_embed1.proj.weight"], model.patch_embed1.proj.weight
    assert w3d.shape == (16, 3, 3, 4, 4)
    torch.testing.assert_close(w3d.sum(2), w2d)  # repeated over T and divided by T
    torch.testing.assert_close(w3d[:, :, 0], w3d[:, :, 2])


def test_missing_old_bn_counters_are_not_an_error():
    source = {
        k: v
        for k, v in _model(seed=1).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    load_pretrained(_model(seed=2), source)


def test_wrong_key_shape_or_missing_key_fail_naming_them():
    source = _model(seed=1).state_dict()
    with pytest.raises(PretrainedError, match=r"unexpected.*blocks9\.0\.extra"):
        load_pretrained(_model(), {**source, "blocks9.0.extra": torch.zeros(2)})
    with pytest.raises(PretrainedError, match=r"missing.*blocks3\.0\.attn\.proj\.bias"):
        load_pretrained(
            _model(), {k: v for k, v in source.items() if k != "blocks3.0.attn.proj.bias"}
        )
    bad = {**source, "blocks2.0.conv1.weight": torch.zeros(8, 16, 1, 1, 1)}
    with pytest.raises(
        PretrainedError, match=r"blocks2\.0\.conv1\.weight: checkpoint \(8, 16, 1, 1, 1\)"
    ):
        load_pretrained(_model(), bad)
    report = load_pretrained(_model(), bad, strict=False)
    assert report.mismatched and report.mismatched[0].startswith("blocks2.0.conv1.weight")


def test_missing_file_and_other_architecture_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(_model(), tmp_path / "nope.pth")
    mvit = torch.load(FIXTURES / "pyslowfast_mvit_tiny_golden.pt", weights_only=True)["state_dict"]
    with pytest.raises(PretrainedError, match=r"MViT \(PySlowFast\).*UniFormer"):
        load_pretrained(_model(), mvit)
    with pytest.raises(PretrainedError, match="not a tensor"):
        load_pretrained(_model(), {"head.weight": [1, 2]})
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(PretrainedError, match="junk.pth"):
        load_pretrained(_model(), tmp_path / "junk.pth")
