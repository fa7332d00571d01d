"""The GPU check: the real-size path of the kit on one GPU, in a few minutes.

On synthetic 32x224 clips: one short ``fit`` of ``uniformer_b`` (bf16, gradient checkpointing),
Adapt BN on the dark pool, a 3 views x 3 crops prediction, and a throughput table (train and
eval clips/s, peak GPU memory, data-loader clips/s with workers against the training step).
Run through ``bench/gpu_check.sh``; results are recorded in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from kit import data, engine, synth
from kit.adapt_bn import adapt_bn
from kit.config import load_params
from kit.models import create_model


def _timed_loader(loader, epochs: int = 3) -> float:
    """Clips/s of a loader alone (decode + transforms) over whole epochs, worker start-up included."""
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["label"])
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="uniformer_b")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--clips-per-class", type=int, default=6)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run with a tiny model")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the GPU check needs one (--device cpu for a smoke run)")
    work = Path(tempfile.mkdtemp(prefix="nightkit-gpu-"))
    t0 = time.perf_counter()
    root = synth.generate(
        work / "data", clips_per_class=args.clips_per_class, size=args.size, frames=48, workers=max(1, args.workers)
    )
    rows = {"card": torch.cuda.get_device_name(0) if cuda else "cpu", "synth_seconds": round(time.perf_counter() - t0, 1)}
    params = load_params(
        "params/arid_uniformer_b32_k600.yaml",
        [
            f"data.root={root}", f"data.num_workers={args.workers}", f"train.batch_size={args.batch}",
            f"train.epochs={args.epochs}", "train.warmup_epochs=0", "models=[{name: " + args.model + ", key: m}]",
            "adapt_bn.num_batches=200", f"eval.batch_size={args.batch}", f"data.frames={args.frames}",
            "train.adapt_bn_every_epoch=false",
            f"data.crop={args.size}", f"train.amp={str(cuda).lower()}",
        ],
    )
    k = len(data.read_classes(root))
    model = create_model(args.model, num_classes=k, drop_path_rate=0.3).to(device)
    train_loader = data.build_loader(
        data.build_dataset(params, "labeled", train=True), batch_size=args.batch, train=True,
        num_workers=args.workers, device=device,
    )
    pool_loader = data.build_loader(
        data.build_dataset(params, "unlabeled", train=False, gamma=0.25), batch_size=args.batch, train=False,
        num_workers=args.workers, device=device,
    )
    val_3x3 = data.build_dataset(params, "val", train=False, gamma=0.25, views=3, crops=3)

    peak = (lambda: round(torch.cuda.max_memory_allocated() / 2**30, 2)) if cuda else (lambda: None)
    reset = torch.cuda.reset_peak_memory_stats if cuda else (lambda: None)
    reset()
    t0 = time.perf_counter()
    summary = engine.fit(
        model, train_loader, params=params.train_for("m"), out_dir=work / "fit", device=device,
        num_classes=k, progress=False,
    )
    fit_s = time.perf_counter() - t0
    clips = len(train_loader) * args.batch * args.epochs  # videos; each gives num_samples augmented samples
    rows.update(
        fit_epochs=summary.epochs_done, fit_seconds=round(fit_s, 1),
        train_clips_per_s=round(clips / fit_s, 2),
        train_peak_mem_GiB=peak(),
        samples_per_clip=params.data.num_samples,
    )

    t0 = time.perf_counter()
    report = adapt_bn(model, pool_loader, num_batches=200, device=device)
    rows.update(adapt_bn_seconds=round(time.perf_counter() - t0, 1), adapt_bn_layers=report.bn_layers,
                adapt_bn_clips=report.clips)

    reset()
    t0 = time.perf_counter()
    preds = engine.predict(model, val_3x3, device=device, batch_size=2, num_workers=args.workers, progress=False)
    pred_s = time.perf_counter() - t0
    rows.update(
        tta="3x3", tta_clips=len(preds), tta_seconds=round(pred_s, 1),
        eval_clips_per_s_3x3=round(len(preds) / pred_s, 2),
        eval_samples_per_s=round(9 * len(preds) / pred_s, 2),
        eval_peak_mem_GiB=peak(),
        tta_scores_finite=bool(torch.isfinite(torch.from_numpy(preds.scores)).all()),
    )
    rows["loader_train_clips_per_s"] = round(_timed_loader(train_loader), 1)
    rows["loader_eval_clips_per_s"] = round(_timed_loader(pool_loader), 1)
    rows["loader_vs_train_step"] = round(rows["loader_train_clips_per_s"] / max(rows["train_clips_per_s"], 1e-9), 2)
    width = max(map(len, rows))
    print("\nGPU check")
    for key, v in rows.items():
        print(f"  {key.ljust(width)}  {v}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
