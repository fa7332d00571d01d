"""kit.distributed and the engine under DDP: 2 CPU processes (gloo) against one process, same global batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kit import distributed as D
from kit import engine
from kit.adapt_bn import adapt_bn, bn_layers
from kit.config import TrainConfig

K = 3
GLOBAL_BATCH = 8


class TinyGN(nn.Module):
    """(B, 3, T, H, W) -> (B, K); GroupNorm, so that per-process batches normalise like the global one."""

    def __init__(self):
        super().__init__()
        self.num_classes = K
        self.net = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool3d(1))
        self.head = nn.Linear(8, K)

    def forward(self, x):
        return self.head(self.net(x).flatten(1))


class TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.AdaptiveAvgPool3d(1))
        self.head = nn.Linear(4, K)

    def forward(self, x):
        return self.head(self.net(x).flatten(1))


class Clips(Dataset):
    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = np.arange(n) % K
        self.video = torch.randn(n, 3, 4, 8, 8, generator=g)
        for i, c in enumerate(self.labels):
            self.video[i, c] += 1.5
        self.paths = [f"v/{i}.mp4" for i in range(n)]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return {"video": self.video[i], "label": int(self.labels[i]), "index": i}


def collate(items):
    return {"video": torch.stack([it["video"] for it in items]), "label": torch.tensor([it["label"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]), "bad": []}


def loaders(world: int):
    # no shuffling: DistributedSampler's rank r takes clips r, r+world, ...; together a global batch
    # holds the same clips as the one-process batch
    def make(ds, batch):
        sampler = DistributedSampler(ds, shuffle=False) if world > 1 else None
        return DataLoader(ds, batch_size=batch // world, sampler=sampler, collate_fn=collate)

    return make(Clips(32), GLOBAL_BATCH), make(Clips(7, seed=1), 4)


def run(out_dir, world: int) -> dict:
    """Train, Adapt BN and predict; returns what the test compares (rank 0's view)."""
    torch.manual_seed(0)
    params = TrainConfig(epochs=2, batch_size=GLOBAL_BATCH // world, lr=5e-3, warmup_epochs=0.5, warmup_lr=1e-4,
                         min_lr=1e-4, clip_grad=1.0, label_smoothing=0.1)
    train, val = loaders(world)
    model = TinyGN()
    summary = engine.fit(model, train, val_loader=val, params=params, out_dir=out_dir, device="cpu", num_classes=K,
                         progress=False)
    preds = engine.predict(model, val, device="cpu", progress=False, save_to=out_dir / "val.npz")

    torch.manual_seed(1)
    bn_model = TinyBN()
    adapt = DataLoader(Clips(16, seed=3), batch_size=4, collate_fn=collate)
    # 4 batches in all; under DDP rank r adapts on batches r, r+2
    shard = [b for i, b in enumerate(adapt) if i % world == D.rank()]
    report = adapt_bn(bn_model, shard, num_batches=4, device="cpu")
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "history": summary.history,
        "scores": preds.scores, "paths": preds.paths,
        "bn": [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bn_layers(bn_model)],
        "adapt_batches": report.batches, "world": D.world_size(),
    }


def _worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = D.init_distributed(device="cpu")
    assert device == torch.device("cpu") and D.is_distributed() and D.rank() == rank
    try:
        result = run(Path(out_dir) / "ddp", world)
        with D.main_process() as main:
            if main:
                torch.save(result, os.path.join(out_dir, "ddp_result.pt"))
    finally:
        D.destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_helpers_in_a_single_process():
    assert (D.rank(), D.world_size(), D.is_main(), D.is_distributed()) == (0, 1, True, False)
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(D.all_reduce_sum(t), t) and torch.equal(D.all_reduce_mean(t), t)
    assert D.reduce_weighted({"a": 2.0}, 3.0) == {"a": 2.0}
    assert D.all_gather_object({"x": 1}) == [{"x": 1}]
    assert D.rank_zero_only(lambda: 5)() == 5
    with D.main_process() as main:
        assert main
    assert D.init_distributed(device="cpu") == torch.device("cpu")  # no torchrun environment: nothing to join


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp_result.pt", weights_only=False)
    single = run(tmp_path / "single", 1)
    assert ddp["world"] == 2 and single["world"] == 1

    # it trains, and like one process with the same global batch
    assert ddp["history"][-1]["loss"] < ddp["history"][0]["loss"]
    for k, v in single["weights"].items():
        assert torch.allclose(ddp["weights"][k], v, atol=1e-5), k
    for a, b in zip(ddp["history"], single["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["top1"] == b["top1"] and a["clips"] == b["clips"] == 32

    # predictions gathered in list order, DistributedSampler's padding (7 clips on 2 ranks) dropped
    assert ddp["paths"] == single["paths"] and ddp["scores"].shape == (7, K)
    assert np.allclose(ddp["scores"], single["scores"], atol=1e-5)

    # Adapt BN: statistics averaged over both processes' batches equal one process over all of them
    assert ddp["adapt_batches"] == single["adapt_batches"] == 4
    for (m1, v1), (m2, v2) in zip(ddp["bn"], single["bn"], strict=True):
        assert torch.allclose(m1, m2, atol=1e-6) and torch.allclose(v1, v2, atol=1e-6)

    # rank 0 alone wrote the files
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (tmp_path / "ddp" / "val.npz").exists() and (tmp_path / "ddp" / "checkpoint.pth").exists()
