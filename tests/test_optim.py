"""kit.optim: AdamW weight-decay groups and the per-iteration warmup + cosine schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from kit.optim import WarmupCosine, build_optimizer, param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3)
        self.bn = nn.BatchNorm3d(4)
        self.ln = nn.LayerNorm(4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 2))  # 3-D, but timm models name it in no_weight_decay()
        self.head = nn.Linear(4, 2, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self):
        return {"pos_embed"}


def test_no_decay_on_biases_1d_norm_and_named_parameters():
    net = Net()
    decay, no_decay = param_groups(net, weight_decay=0.05, skip=("pos_embed",))
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["conv.weight", "head.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "bn.bias", "bn.weight", "conv.bias", "ln.bias", "ln.weight", "pos_embed",
    ]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    opt = build_optimizer(net, lr=1e-3, weight_decay=0.05, eps=1e-8)
    assert len(opt.param_groups[1]["params"]) == 6 and opt.defaults["eps"] == 1e-8  # no_weight_decay() honoured


def test_the_fused_step_matches_the_reference_adamw():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    twin = copy.deepcopy(net)
    fused = build_optimizer(net, lr=1e-2, weight_decay=0.05)
    plain = torch.optim.AdamW(param_groups(twin, weight_decay=0.05), lr=1e-2, foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    x = torch.randn(16, 4)
    for _ in range(5):
        for model, opt in ((net, fused), (twin, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_warmup_then_cosine_per_iteration_and_state_round_trip():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, total_steps=11, warmup_steps=4, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(1e-6)  # the first step runs at warmup_lr
    assert lrs[2] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 2 / 4)
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-5)  # the last step reaches min_lr
    mid = 4 + 3
    assert lrs[mid] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 3 / 6)))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))

    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    again = WarmupCosine(opt2, total_steps=11, warmup_steps=4, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
    state = {"step_count": 3, "total_steps": 11, "warmup_steps": 4}
    again.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(lrs[3]) and again.state_dict() == state
