"""Speed of the kit's data loaders against raw decord decoding (targets: eval >= 0.8x, train >= 0.6x).

Run ``python bench/loader.py [DATA_DIR]`` (without DATA_DIR a small synthetic set is generated in
a temporary folder). For each worker count it times, over the same clips of one list:

- ``raw decord``: ``VideoReader(path).get_batch(indices)`` of the eval frame indices, the uint8
  frames batched and delivered to the main process, nothing else;
- ``kit eval``: the DataLoader of :func:`kit.data.build_loader` over :func:`kit.data.build_dataset`
  with ``train=False`` (decode, gamma, resize, crop, collate): uint8 clips, as raw decoding gives;
- ``kit train``: ``train=True`` (random indices, RandomResizedCrop, flip, RandAugment as the
  params say); with ``--chunk-frames 0,8`` also ``kit train, parts of 8 frames`` (``data.chunk_frames``:
  the same clips, taken through crop, flip and RandAugment 8 frames at a time);
- ``finish``: what :class:`kit.data.DeviceLoader` then does to those batches where the model runs
  (float32 conversion, mean/std, and random erasing in training), timed apart on ``device`` in
  milliseconds per clip: on a GPU it runs beside the model, on a CPU it is the model's thread's.

Each loader runs one warm-up pass (workers start, files enter the page cache), then ``repeats``
timed passes, the three loaders taking turns; clips/s is over all timed passes. Each pass of the
train loader draws new augmentations, and the cost of a clip depends on its RandAugment draws (0 to 4
ops of 1 to 7 ms at 32 x 224): with few clips the train ratio moves by several hundredths from run
to run. ``run_benchmark(...)`` returns the rows as dicts for a suite. Timings
are printed, never asserted.

The latest figures of the suite (``python -m bench``) are in ``bench/RESULTS_CPU.md`` (this 2-core
CPU box) and ``bench/RESULTS.md`` (H100); ``python -m bench.hotspots loader [--train]`` and
``python -m bench.hotspots randaugment`` show where a loader's time goes.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kit import data
from kit.config import params_from_dict
from kit.sampling import sample_indices

log = logging.getLogger(__name__)


class RawDecord(Dataset):
    """Baseline: decode the eval frame indices of each clip with decord, nothing else."""

    def __init__(self, root, paths, *, frames: int):
        self.root, self.paths, self.frames = Path(root), list(paths), frames

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        import decord

        vr = decord.VideoReader(str(self.root / self.paths[i]), num_threads=1)
        idx = np.unique(sample_indices(len(vr), self.frames, train=False))
        return vr.get_batch(idx.tolist()).asnumpy()


def _time_loaders(loaders: dict, repeats: int) -> dict:
    """``{name: (clips, mean seconds of a full pass, the warm-up pass's batches)}``. After one warm-up
    pass each, the loaders take turns, one pass at a time, so that a slow stretch of a shared
    machine hits them alike. The mean, not the best pass: the train loader draws new augmentations
    every pass, and its best pass would be the one whose RandAugment draws were cheapest."""
    warm = {name: list(loader) for name, loader in loaders.items()}
    seconds = dict.fromkeys(loaders, 0.0)
    clips = dict.fromkeys(loaders, 0)
    for _ in range(repeats):
        for name, loader in loaders.items():
            start, n = time.perf_counter(), 0
            for batch in loader:
                n += len(batch["label"]) if isinstance(batch, dict) else len(batch)
            seconds[name] += time.perf_counter() - start
            clips[name] = n
    return {name: (clips[name], seconds[name] / repeats, warm[name]) for name in loaders}


def _time_finish(finish, batches: list, device: torch.device, repeats: int) -> float:
    """Best milliseconds per clip of ``finish`` over ``batches`` (already on ``device``)."""
    videos = [b["video"].to(device) for b in batches if b["video"] is not None]
    clips = sum(len(v) for v in videos)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for v in videos:
            finish(v)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / max(clips, 1)


def run_benchmark(
    data_dir,
    *,
    list_name: str = "labeled.csv",
    frames: int = 8,
    crop: int = 56,
    short_side: int | None = 64,
    randaugment: str | None = None,
    random_erasing: float = 0.0,
    gamma: float | None = 0.25,
    workers=(0, 2),
    batch_size: int = 8,
    max_clips: int = 64,
    repeats: int = 2,
    device: str = "cpu",
    chunk_frames=(None,),
) -> list[dict]:
    """Rows ``{loader, workers, clips, seconds, clips_per_s, ratio}`` (ratio = clips/s over raw
    decord's), then ``{loader: "kit eval finish" / "kit train finish", device, ms_per_clip}``. The train
    loader is timed once for each value of ``chunk_frames`` (``data.chunk_frames``; None or 0: whole clips)."""
    device = torch.device(device)
    root = Path(data_dir)
    clips = data.read_list(root / list_name, None).paths[:max_clips]
    sub = Path(tempfile.mkdtemp(prefix="bench_list_")) / "bench.csv"
    data.write_list(sub, clips, [0] * len(clips))
    def params(chunk=None):
        return params_from_dict(
            {
                "run": "bench",
                "data": {
                    "root": str(root),
                    "frames": frames,
                    "crop": crop,
                    "short_side": short_side,
                    "randaugment": randaugment,
                    "random_erasing": random_erasing,
                    "num_samples": 1,
                    "chunk_frames": chunk or None,
                },
                "models": [{"name": "none"}],
            }
        )

    rows, finish = [], {}
    for w in workers:
        loaders = {
            "raw decord": DataLoader(
                RawDecord(root, clips, frames=frames),
                batch_size=batch_size,
                num_workers=w,
                persistent_workers=w > 0,
            ),
            "kit eval": data.build_loader(
                data.build_dataset(params(), str(sub), train=False, gamma=gamma),
                batch_size=batch_size,
                train=False,
                num_workers=w,
            ),
        }
        for chunk in chunk_frames:
            name = f"kit train, parts of {chunk} frames" if chunk else "kit train"
            loaders[name] = data.build_loader(
                data.build_dataset(params(chunk), str(sub), train=True),
                batch_size=batch_size,
                train=True,
                num_workers=w,
                drop_last=False,
            )
        # the kit's loaders without DeviceLoader's last step: uint8 clips, as raw decoding gives
        timed = _time_loaders({name: getattr(ld, "loader", ld) for name, ld in loaders.items()}, repeats)
        raw = None
        for name, (n, sec, batches) in timed.items():
            if name in ("kit eval", "kit train") and name not in finish:
                finish[name] = _time_finish(loaders[name].finish, batches, device, repeats)
            rate = n / sec
            raw = raw or rate
            rows.append(
                {
                    "loader": name,
                    "workers": w,
                    "clips": n,
                    "seconds": round(sec, 3),
                    "clips_per_s": round(rate, 1),
                    "ratio": round(rate / raw, 2),
                }
            )
            log.info("%s", rows[-1])
    for name, ms in finish.items():
        rows.append({"loader": f"{name} finish", "device": str(device), "ms_per_clip": round(ms, 3)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "data_dir", nargs="?", help="data directory (default: a generated synthetic set)"
    )
    ap.add_argument("--list", default="labeled.csv", help="list whose clips are read")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--crop", type=int, default=56)
    ap.add_argument("--short-side", type=int, default=64)
    ap.add_argument("--randaugment", default=None, help='timm spec, e.g. "rand-m7-n4-mstd0.5"')
    ap.add_argument("--random-erasing", type=float, default=0.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-clips", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    ap.add_argument("--device", default="cpu", help="where the batches are finished (cpu, cuda)")
    ap.add_argument("--chunk-frames", default="0",
                    help="comma-separated values of data.chunk_frames for the train loader (0: whole clips)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    data_dir = args.data_dir
    if data_dir is None:
        from kit import synth

        data_dir = synth.generate(
            Path(tempfile.mkdtemp(prefix="bench_synth_")),
            clips_per_class=8,
            pool_per_class=0,
            val_per_class=0,
            test_per_class=0,
            workers=2,
        )
    rows = run_benchmark(
        data_dir,
        list_name=args.list,
        frames=args.frames,
        crop=args.crop,
        short_side=args.short_side,
        randaugment=args.randaugment,
        random_erasing=args.random_erasing,
        workers=args.workers,
        batch_size=args.batch_size,
        max_clips=args.max_clips,
        repeats=args.repeats,
        device=args.device,
        chunk_frames=[int(c) for c in args.chunk_frames.split(",")],
    )
    print(
        f"{'loader':12s} {'workers':>7s} {'clips':>6s} {'seconds':>8s} {'clips/s':>8s} {'ratio':>6s}"
    )
    for r in rows:
        if "ms_per_clip" in r:
            print(f"{r['loader']} on {r['device']}: {r['ms_per_clip']:.2f} ms per clip")
            continue
        print(
            f"{r['loader']:12s} {r['workers']:7d} {r['clips']:6d} {r['seconds']:8.3f} "
            f"{r['clips_per_s']:8.1f} {r['ratio']:6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
