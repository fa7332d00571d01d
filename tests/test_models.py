"""Registry: every registered model builds small, runs forward + backward, and gives (B, K) for 8/16/32 frames."""

import pytest
import torch

from kit.models import create_model, list_models

REQUIRED = {
    "uniformer_s",
    "uniformer_b",
    "uniformer_tiny",
    "mvit_b",
    "mvit_tiny",
    "slowfast_r50",
    "slowfast_r101",
    "slowfast_tiny",
}
# full-size names shrunk so that every family runs on CPU in well under a second
SMALL = {
    "uniformer": dict(depth=[1, 1, 1, 1], embed_dim=[16, 16, 32, 32], head_dim=16),
    "mvit": dict(
        depth=2, embed_dim=8, dim_mul=[[1, 2.0]], head_mul=[[1, 2.0]], pool_q_stride=[[1, 1, 2, 2]]
    ),
    "slowfast": dict(width_per_group=8),
}


def _build(name, *, frames=8, crop=32, num_classes=5):
    family = name.split("_")[0]
    overrides = {} if name.endswith("_tiny") else dict(SMALL[family])
    if family != "uniformer":  # these two are built for one input size
        overrides.update(frames=frames, crop=crop)
    return create_model(name, num_classes=num_classes, **overrides)


def test_registry_lists_the_method_models():
    assert REQUIRED <= set(list_models())
    assert list_models("uniformer_*") == ["uniformer_b", "uniformer_s", "uniformer_tiny"]
    with pytest.raises(KeyError, match="unknown model 'uniformer_xl'"):
        create_model("uniformer_xl")


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_model_trains_one_step(name):
    torch.manual_seed(0)
    model = _build(name).train()
    x = torch.randn(2, 3, 8, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 5)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 4])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("frames", [8, 16, 32])
@pytest.mark.parametrize("family", ["uniformer_tiny", "mvit_tiny", "slowfast_tiny"])
def test_output_shape_for_frame_counts(family, frames):
    model = _build(family, frames=frames, num_classes=11).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, frames, 32, 32)).shape == (1, 11)
