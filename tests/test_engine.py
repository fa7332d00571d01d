"""kit.engine: training loop, checkpoints and resume, NaN stop, evaluation, predictions with TTA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import DataLoader, Dataset

from kit import engine
from kit.config import TrainConfig
from kit.predictions import load as load_predictions

K = 3  # classes of the synthetic set


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyCNN(nn.Module):
    """A 3D CNN with BatchNorm: (B, 3, T, H, W) -> (B, K)."""

    def __init__(self, num_classes=K):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(8, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
        )
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Clips(Dataset):
    """Learnable synthetic clips: class c brightens channel c and moves over time; dict items of the kit.data contract.

    ``samples`` > 1 gives ``(S, C, T, H, W)`` videos; ``bad`` indices yield ``{"bad": path}``;
    ``poison`` makes every video NaN; ``augment`` adds noise from torch's global RNG.
    """

    def __init__(self, n=24, *, seed=0, samples=1, bad=(), probs=False, augment=False, views=None, crops=None):
        g = torch.Generator().manual_seed(seed)
        self.labels = np.arange(n) % K
        self.base = torch.randn(n, 3, 4, 16, 16, generator=g) * 0.5
        for i, c in enumerate(self.labels):
            self.base[i, c] += torch.linspace(0, 2, 4).view(4, 1, 1)
        self.paths = [f"clips/{i:03d}.mp4" for i in range(n)]
        self.samples, self.bad, self.probs, self.augment, self.poison = samples, set(bad), probs, augment, False
        self.views = views
        self.transform = type("T", (), {"crops": crops, "gamma": 0.25})() if crops else None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if i in self.bad:
            return {"bad": self.paths[i], "index": i}
        v = self.base[i].clone()
        if self.augment:
            v += 0.1 * torch.randn_like(v)
        if self.samples > 1:
            v = torch.stack([v + 0.01 * s for s in range(self.samples)])
        if self.poison:
            v = torch.full_like(v, float("nan"))
        item = {"video": v, "label": int(self.labels[i]), "index": i}
        if self.probs:
            p = torch.full((K,), 0.1)
            p[self.labels[i]] = 0.8
            item["probs"] = p
        return item


def collate(items):
    good = [it for it in items if "bad" not in it]
    out = {"bad": [it["bad"] for it in items if "bad" in it]}
    if not good:
        return {**out, "video": None, "label": torch.zeros(0, dtype=torch.int64), "index": torch.zeros(0, dtype=torch.int64)}
    out["video"] = torch.stack([it["video"] for it in good])
    out["label"] = torch.tensor([it["label"] for it in good])
    out["index"] = torch.tensor([it["index"] for it in good])
    if "probs" in good[0]:
        out["probs"] = torch.stack([it["probs"] for it in good])
    return out


def loader(ds, *, batch_size=4, shuffle=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, collate_fn=collate)


def cfg(**kw):
    base = dict(epochs=3, batch_size=4, lr=1e-2, warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-4, weight_decay=0.05,
                clip_grad=1.0, label_smoothing=0.1, resume="auto", metric="top1")
    base.update(kw)
    return TrainConfig(**base)


def model(seed=0):
    torch.manual_seed(seed)
    return TinyCNN()


def test_loss_decreases_and_metrics_are_logged(tmp_path):
    ds = Clips(24)
    out = engine.fit(model(), loader(ds), val_loader=loader(Clips(12, seed=1), shuffle=False),
                     params=cfg(epochs=6), out_dir=tmp_path, device="cpu", num_classes=K, progress=False)
    losses = [r["loss"] for r in out.history]
    assert losses[-1] < 0.6 * losses[0]
    assert out.history[-1]["top1"] > 0.6  # chance is 1/3
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "top1", "top5", "mean_class_acc", "val_loss", "time_s", "clips_per_s"):
        assert key in rows[-1]
    assert rows[0]["clips"] == 24
    ckpt = engine.load_checkpoint(tmp_path / "checkpoint.pth")
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "best_metric", "params", "rng"}
    assert ckpt["epoch"] == 6 and ckpt["scaler"] is None
    best = engine.load_checkpoint(tmp_path / "best.pth")
    assert best["best_metric"] == max(r["top1"] for r in rows)
    assert not (tmp_path / ".checkpoint.pth.tmp").exists()


def test_val_every_evaluates_every_nth_and_the_last_epoch(tmp_path):
    out = engine.fit(model(), loader(Clips(12)), val_loader=loader(Clips(6, seed=1), shuffle=False),
                     params=cfg(epochs=5, val_every=2), out_dir=tmp_path, device="cpu", num_classes=K, progress=False)
    assert [r["epoch"] for r in out.history if "top1" in r] == [2, 4, 5]
    best = engine.load_checkpoint(tmp_path / "best.pth")
    assert best["epoch"] in (2, 4, 5) and best["best_metric"] == max(r["top1"] for r in out.history if "top1" in r)
    from kit import viz

    viz.training_curves(tmp_path / "metrics.jsonl")  # plots rows without val among rows with it


def _fit_with_noise(out_dir, **kw):
    # augmentation from torch's global RNG and mixup from numpy's: both must be restored on resume
    ds = Clips(16, augment=True)
    return engine.fit(model(), loader(ds), params=cfg(epochs=3, mixup=0.8, cutmix=1.0), out_dir=out_dir,
                      device="cpu", num_classes=K, progress=False, seed=0, **kw)


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    full = _fit_with_noise(tmp_path / "full")
    part = _fit_with_noise(tmp_path / "part", stop_after_epoch=1)
    assert part.epochs_done == 1 and not part.finished
    torch.manual_seed(1234)  # a new process would start from other RNG states
    np.random.seed(1234)
    resumed = _fit_with_noise(tmp_path / "part")
    assert resumed.finished
    a = engine.load_checkpoint(tmp_path / "full" / "checkpoint.pth")["model"]
    b = engine.load_checkpoint(tmp_path / "part" / "checkpoint.pth")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_init_from_loads_weights_and_restarts_the_schedule(tmp_path):
    engine.fit(model(), loader(Clips(16)), params=cfg(epochs=2), out_dir=tmp_path / "a", device="cpu",
               num_classes=K, progress=False)
    trained = engine.load_checkpoint(tmp_path / "a" / "best.pth")["model"]
    seen = []

    def first_step(opt, args, kwargs):
        if not seen:
            net_weight = opt.param_groups[0]["params"][0].detach().clone()
            seen.append((opt.param_groups[0]["lr"], net_weight))

    handle = register_optimizer_step_pre_hook(first_step)
    try:
        engine.fit(model(seed=5), loader(Clips(16)), params=cfg(epochs=1), out_dir=tmp_path / "b", device="cpu",
                   num_classes=K, progress=False, init_from=tmp_path / "a" / "best.pth")
    finally:
        handle.remove()
    lr, weight = seen[0]
    assert lr == pytest.approx(1e-4)  # warmup_lr: the schedule starts again
    assert torch.equal(weight, trained["features.0.weight"])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    ds = Clips(16)
    engine.fit(model(), loader(ds), params=cfg(), out_dir=tmp_path, device="cpu", num_classes=K,
               progress=False, stop_after_epoch=1)
    before = (tmp_path / "checkpoint.pth").read_bytes(), (tmp_path / "best.pth").read_bytes()
    ds.poison = True
    with pytest.raises(FloatingPointError, match=r"epoch 2, iteration 1.*last good checkpoint kept"):
        engine.fit(model(), loader(ds), params=cfg(), out_dir=tmp_path, device="cpu", num_classes=K, progress=False)
    assert ((tmp_path / "checkpoint.pth").read_bytes(), (tmp_path / "best.pth").read_bytes()) == before
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_pseudo_rounds_alternate_and_mixed_with_samples_and_bad_videos(tmp_path):
    steps = []
    handle = register_optimizer_step_pre_hook(lambda opt, a, k: steps.append(1))
    try:
        lab = loader(Clips(8, samples=2, bad={3}), shuffle=False)  # 2 batches; (B, S, C, T, H, W) videos
        pse = loader(Clips(12, seed=2, samples=2, probs=True))  # 3 batches: the longer loader sets the epoch
        out = engine.fit(model(), lab, params=cfg(epochs=1), out_dir=tmp_path / "alt", device="cpu", num_classes=K,
                         progress=False, pseudo_loader=pse, soft_targets=True, pseudo_weight=0.5)
        assert len(steps) == 2 * 3  # one labelled and one pseudo step per iteration
        assert out.history[0]["iterations"] == 3 and out.history[0]["pseudo_loss"] > 0
        # labelled batches 0-3 (one bad), 4-7, then restarted: 0-3 again; 2 samples per clip
        assert out.history[0]["clips"] == (3 + 4 + 3) * 2 + 12 * 2
        assert (tmp_path / "alt" / "bad_videos.txt").read_text() == "clips/003.mp4\n"
        steps.clear()
        out = engine.fit(model(), lab, params=cfg(epochs=1), out_dir=tmp_path / "mix", device="cpu", num_classes=K,
                         progress=False, pseudo_loader=pse, pseudo_mode="mixed")
        assert len(steps) == 3 and "pseudo_loss" in out.history[0]
    finally:
        handle.remove()


def test_video_mixup_cuts_the_same_box_in_every_frame():
    np.random.seed(0)
    mix = engine.VideoMixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=2, label_smoothing=0.0)
    x = torch.stack([torch.zeros(3, 4, 16, 16), torch.ones(3, 4, 16, 16)])
    target = torch.eye(2)
    for _ in range(20):
        xm, tm = mix(x.clone(), target)
        pasted = xm[0]  # clip 0 (zeros) with a box from clip 1 (ones)
        assert torch.equal(pasted, pasted[:1, :1].expand_as(pasted))  # same box in every channel and frame
        frac = pasted[0, 0].mean().item()
        assert tm[0, 1].item() == pytest.approx(frac, abs=1e-6)  # target weight = pasted area
        assert torch.allclose(tm.sum(1), torch.ones(2))


def test_classification_metrics_on_known_logits():
    logits = np.array([[3, 2, 1, 0, 0, 0], [0, 3, 2, 1, 0, 0], [1, -1, 0, 0, 0, 3], [0, 0, 3, 2, 1, 0],
                       [5, 0, 0, 0, 0, 0]], dtype=np.float32)
    labels = np.array([0, 2, 1, 2, -1])
    m = engine.classification_metrics(logits, labels, num_classes=6)
    assert m["n"] == 4
    assert m["top1"] == pytest.approx(2 / 4)
    assert m["top5"] == pytest.approx(3 / 4)  # clip 2's class 1 ranks last
    assert m["mean_class_acc"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["confusion"][2, 1] == 1 and m["confusion"][2, 2] == 1 and m["confusion"].sum() == 4
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits[:4]), torch.tensor(labels[:4]))
    assert m["loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_predict_sums_views_times_crops_and_round_trips(tmp_path):
    net = model().eval()
    ds = Clips(7, samples=6, bad={4}, views=2, crops=3)
    preds = engine.predict(net, loader(ds, batch_size=3, shuffle=False), device="cpu", progress=False,
                           save_to=tmp_path / "p.npz", meta={"model": "tiny"})
    assert preds.scores.shape == (7, K) and preds.kind == "logits"
    with torch.no_grad():
        for i in (0, 6):
            direct = net(ds[i]["video"]).sum(0)
            assert np.allclose(preds.scores[i], direct.numpy(), atol=1e-5)
    assert np.all(preds.scores[4] == 0) and preds.meta["bad"] == ["clips/004.mp4"]
    assert preds.meta["views"] == 2 and preds.meta["crops"] == 3 and preds.meta["gamma"] == 0.25
    assert preds.meta["samples_per_clip"] == 6
    back = load_predictions(tmp_path / "p.npz", expect_paths=ds.paths)
    assert back.paths == ds.paths and np.array_equal(back.labels, ds.labels)
    assert np.array_equal(back.scores, preds.scores) and back.meta["model"] == "tiny"
    ev = engine.evaluate(net, loader(ds, batch_size=3, shuffle=False), device="cpu", num_classes=K, progress=False)
    assert ev["n"] == 6 and ev["confusion"].shape == (K, K)


def test_fit_predict_on_real_videos_with_uniformer_tiny(tiny_data_dir, tmp_path):
    from kit.data import VideoDataset, build_loader, read_classes
    from kit.models import create_model
    from kit.transforms import EvalPreset, TrainPreset

    k = len(read_classes(tiny_data_dir))
    train = VideoDataset(tiny_data_dir, "labeled.csv", frames=8, train=True, num_samples=2,
                         transform=TrainPreset(crop=32, scale=(0.5, 1.0)))
    tta = EvalPreset(crop=32, short_side=40, crops=3, gamma=0.25)
    val = VideoDataset(tiny_data_dir, "val.csv", frames=8, train=False, views=2, transform=tta)
    torch.manual_seed(0)
    net = create_model("uniformer_tiny", num_classes=k)
    out = engine.fit(net, build_loader(train, batch_size=2, train=True), val_loader=build_loader(val, batch_size=2, train=False),
                     params=cfg(epochs=2, grad_checkpointing=True), out_dir=tmp_path / "run", device="cpu",
                     num_classes=k, progress=False)
    assert out.finished and out.history[-1]["clips"] == 6 * 2 and np.isfinite(out.history[-1]["loss"])
    preds = engine.predict(net, val, device="cpu", batch_size=2, progress=False)
    assert preds.scores.shape == (3, k) and preds.paths == val.paths
    assert (preds.meta["views"], preds.meta["crops"], preds.meta["gamma"], preds.meta["samples_per_clip"]) == (2, 3, 0.25, 6)
    # a plain DataLoader gives the dataset's uint8 clips: a clear error, not a dtype crash in the model
    from kit.adapt_bn import adapt_bn
    from kit.data import collate

    raw = DataLoader(val, batch_size=2, collate_fn=collate)
    with pytest.raises(TypeError, match="build_loader"):
        engine.predict(net, raw, device="cpu", progress=False)
    with pytest.raises(TypeError, match="uint8 clips"):
        adapt_bn(net, raw, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_fit_on_cuda_with_autocast_resume_and_predict(tmp_path, amp_dtype):
    from kit.adapt_bn import adapt_bn
    from kit.models import create_model

    torch.manual_seed(0)
    net = create_model("uniformer_tiny", num_classes=K)
    ds = Clips(16)
    ds.base = torch.nn.functional.interpolate(ds.base, size=(8, 32, 32))  # (N, 3, 8, 32, 32)
    params = cfg(epochs=2, amp=True, amp_dtype=amp_dtype)
    part = engine.fit(net, loader(ds), params=params, out_dir=tmp_path, device="cuda", num_classes=K,
                      progress=False, stop_after_epoch=1)
    ckpt = engine.load_checkpoint(tmp_path / "checkpoint.pth")
    assert (ckpt["scaler"] is not None) == (amp_dtype == "float16")
    out = engine.fit(net, loader(ds), val_loader=loader(ds, shuffle=False), params=params, out_dir=tmp_path,
                     device="cuda", num_classes=K, progress=False)
    assert part.epochs_done == 1 and out.finished and len(out.history) == 2
    assert all(np.isfinite(r["loss"]) for r in out.history)
    assert next(net.parameters()).is_cuda
    report = adapt_bn(net, loader(ds), num_batches=2, device="cuda")
    assert report.batches == 2 and report.warning is None
    preds = engine.predict(net, loader(ds, shuffle=False), device="cuda", progress=False)
    assert preds.scores.shape == (16, K) and np.isfinite(preds.scores).all()


def test_adapt_bn_after_every_epoch_leaves_the_dark_pool_statistics(tmp_path):
    from kit.adapt_bn import adapt_bn, bn_layers
    from kit.config import AdaptBNConfig

    dark = Clips(8, seed=7)
    dark.base = dark.base * 0.1 - 1.0  # another domain: other BatchNorm statistics
    net = model()
    out = engine.fit(net, loader(Clips(16)), params=cfg(epochs=2, adapt_bn_every_epoch=True), out_dir=tmp_path,
                     device="cpu", num_classes=K, progress=False, adapt_loader=loader(dark, shuffle=False),
                     adapt_params=AdaptBNConfig(num_batches=2))
    assert [r["adapt_bn_clips"] for r in out.history] == [8, 8]
    after_fit = [bn.running_mean.clone() for bn in bn_layers(net)]
    adapt_bn(net, loader(dark, shuffle=False), num_batches=2, device="cpu")  # the same pass on the final weights
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(after_fit, bn_layers(net), strict=True))
    with pytest.raises(ValueError, match="adapt_loader"):
        engine.fit(net, loader(Clips(16)), params=cfg(adapt_bn_every_epoch=True), out_dir=tmp_path / "x",
                   device="cpu", num_classes=K)
