"""Where the time of a missed target goes: profiles of the loaders and of Adapt BN.

::

    python -m bench.hotspots loader [--train] [--clips 16] [--passes 3] [--top 12] [--workers N]
    python -m bench.hotspots randaugment [--spec rand-m7-n4-mstd0.5]
    python -m bench.hotspots adapt_bn [--model slowfast_tiny] [--batches 16] [--device cuda --frames 32 --size 224]
                                      [--split-blocks-per-sm N] [--stats-kernel pytorch|triton]

``loader``: cProfile of the kit's eval (or ``--train``) DataLoader at 32 frames x 224 with the
reference recipe's augmentations (``params/arid_uniformer_b32_k600.yaml``), 0 workers, over the
synthetic set that ``python -m bench`` caches in ``outputs/bench/cache`` (generated when missing).
Prints the functions with the most time of their own, in milliseconds per clip. With ``--workers N``
it profiles the same loader inside N DataLoader workers as well (each worker's profile is written when
it ends) and prints the functions whose own CPU time per clip differs most between the main process
and the workers: where workers that slow each other down lose their time.

``randaugment``: milliseconds of each of timm's ops on one clip of 32 frames x 224 (one core,
best of 5), as :class:`kit.randaugment.ClipRandAugment` applies it, and the mean cost per clip of
the policy (ops x probability that each fires).

``adapt_bn``: the torch profiler over one inference pass and one Adapt BN pass of the same
batches (as ``bench/adapt_bn.py`` times them), printing each pass's total and the operators
whose time differs most between the two (their own CPU time; on CUDA, each kernel's GPU time).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import tempfile
import time
from functools import partial
from multiprocessing import util
from pathlib import Path

import torch

from bench.__main__ import REFERENCE_PARAMS, _synthetic_set


def _loader(*, train: bool, clips: int, cache: Path, size: int, frames: int, workers: int = 0):
    """The kit's uint8 DataLoader at ``frames`` x ``size`` with the reference recipe, over ``clips`` clips."""
    from kit import data
    from kit.config import load_params

    root = _synthetic_set(cache, size=size, clips_per_class=max(1, clips // 2), num_classes=2)
    ref = load_params(
        REFERENCE_PARAMS, [f"data.root={root}", "data.num_samples=1", f"data.frames={frames}", f"data.crop={size}"]
    )
    ds = data.build_dataset(ref, "labeled", train=train, gamma=None if train else ref.eval.gamma)
    return data.build_loader(ds, batch_size=4, train=train, num_workers=workers, drop_last=False).loader


def _own_ms(stats: pstats.Stats, clips: int) -> dict[str, float]:
    # {(file, line, name): (calls, primitive, own, cumulative, callers)} -> {function: own ms per clip}
    out: dict[str, float] = {}
    for (f, line, name), (_, _, own, _, _) in stats.stats.items():
        key = f"{Path(f).name}:{line}({name})"
        out[key] = out.get(key, 0.0) + own * 1000 / clips
    return out


# what getrusage counts for a process, and the names they are reported by (per clip)
USAGE = {
    "ru_utime": "user CPU ms", "ru_stime": "system CPU ms", "ru_minflt": "minor page faults",
    "ru_majflt": "major page faults", "ru_nvcsw": "voluntary context switches",
    "ru_nivcsw": "involuntary context switches",
}


def _usage() -> dict[str, float]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return {k: float(getattr(u, k)) for k in USAGE}


def _usage_per_clip(totals: dict[str, float], clips: int) -> dict[str, float]:
    # getrusage's totals (seconds, counts) -> per clip, by the names of USAGE (CPU times in ms)
    return {name: totals[k] * (1000 if k.endswith("time") else 1) / clips for k, name in USAGE.items()}


def _profile_passes(loader, passes: int, timer=None) -> tuple[pstats.Stats, float, dict[str, float]]:
    """One warm-up pass of ``loader`` (files into the page cache, workers started), then ``passes``
    passes under cProfile (``timer``: its clock; None, wall time): ``(stats, seconds of those passes,
    this process's getrusage counts over them)``."""
    for _ in loader:
        pass
    prof = cProfile.Profile(timer) if timer else cProfile.Profile()
    before = _usage()
    start = time.perf_counter()
    prof.enable()
    for _ in range(passes):
        for _ in loader:
            pass
    prof.disable()
    seconds = time.perf_counter() - start
    return pstats.Stats(prof), seconds, {k: v - before[k] for k, v in _usage().items()}


def profile_loader(
    *, train: bool, clips: int, passes: int, top: int, cache: Path, size: int = 224, frames: int = 32
) -> list[tuple[str, float]]:
    """``[(function, ms per clip of its own time)]``, most first, for the ``frames`` x ``size`` loader."""
    loader = _loader(train=train, clips=clips, cache=cache, size=size, frames=frames)
    stats, _, _ = _profile_passes(loader, passes)
    rows = _own_ms(stats, passes * len(loader.dataset)).items()
    return sorted(rows, key=lambda r: -r[1])[:top]


def _profile_worker(worker_id: int, *, folder: str, init=None) -> None:
    # worker_init_fn: profile this worker's whole life, written out when the process ends (the
    # DataLoader shuts its workers down in order, and multiprocessing runs its finalizers then)
    if init is not None:
        init(worker_id)
    prof = cProfile.Profile(time.process_time)
    util.Finalize(None, _dump_profile, args=(prof, Path(folder) / f"worker{worker_id}.pstats"), exitpriority=100)
    prof.enable()


def _dump_profile(prof: cProfile.Profile, path: Path) -> None:
    prof.disable()
    prof.dump_stats(str(path))
    path.with_suffix(".usage.json").write_text(json.dumps(_usage()))  # the worker's whole life, as the profile


def _profile_in_workers(loader, passes: int) -> tuple[pstats.Stats, float, dict[str, float]]:
    """``(stats, seconds, getrusage counts)`` of :func:`_profile_passes`, the profile and the counts
    taken inside ``loader``'s workers (their whole life: the warm-up pass too; counts summed) in CPU time."""
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as folder:
        loader.worker_init_fn = partial(_profile_worker, folder=folder, init=loader.worker_init_fn)
        _, seconds, _ = _profile_passes(loader, passes)
        loader._iterator._shutdown_workers()  # the workers write their profiles as they end
        files = sorted(Path(folder).glob("worker*.pstats"))
        if len(files) != loader.num_workers:
            raise RuntimeError(f"{len(files)} of {loader.num_workers} workers wrote a profile")
        usages = [json.loads(f.with_suffix(".usage.json").read_text()) for f in files]
        return pstats.Stats(*map(str, files)), seconds, {k: sum(u[k] for u in usages) for k in USAGE}


def profile_loader_workers(
    *, train: bool, clips: int, passes: int, top: int, cache: Path, workers: int, size: int = 224, frames: int = 32
) -> tuple[dict, dict, list[tuple[str, float, float]]]:
    """The same loader in the main process and in ``workers`` worker processes: ``({"main": clips/s,
    "workers": clips/s, "per worker": clips/s, "main CPU ms per clip": ..., "workers CPU ms per clip":
    ...}, {"main": usage, "workers": usage}, [(function, own CPU ms per clip in the main process, own CPU
    ms per clip in the workers)])``, the functions whose time differs most first; ``usage`` is what
    getrusage counted per clip (user and system CPU ms, page faults, context switches: :data:`USAGE`),
    in the main process over its profiled passes and summed over the workers' lives. CPU time, not wall
    time, so that a process waiting for a core (more processes than cores) counts nothing: a function
    that costs more CPU per clip in the workers than in the main process is one the workers slow each
    other down in (caches, memory bandwidth); more system time or page faults point at memory handed
    out and back, more involuntary context switches at processes competing for cores. Run it with torch
    on 1 thread, as the CLI does, so that the main process's torch calls are as single-threaded as a
    worker's."""
    main = _loader(train=train, clips=clips, cache=cache, size=size, frames=frames)
    n = passes * len(main.dataset)
    main_stats, main_s, main_usage = _profile_passes(main, passes, time.process_time)
    loader = _loader(train=train, clips=clips, cache=cache, size=size, frames=frames, workers=workers)
    worker_stats, worker_s, worker_usage = _profile_in_workers(loader, passes)
    rates = {"main": n / main_s, "workers": n / worker_s, "per worker": n / worker_s / workers}
    lives = n + len(loader.dataset)  # the workers' clips: the warm-up pass's too
    usage = {"main": _usage_per_clip(main_usage, n), "workers": _usage_per_clip(worker_usage, lives)}
    own = {"main": _own_ms(main_stats, n), "workers": _own_ms(worker_stats, lives)}
    for mode, ms in own.items():  # the sum is steadier than any one op, whose RandAugment draws differ
        rates[f"{mode} CPU ms per clip"] = sum(ms.values())
    keys = set(own["main"]) | set(own["workers"])
    rows = [(k, own["main"].get(k, 0.0), own["workers"].get(k, 0.0)) for k in keys]
    rows.sort(key=lambda r: -abs(r[2] - r[1]))
    return rates, usage, rows[:top]


def profile_randaugment(*, spec: str, repeats: int = 5) -> tuple[list[tuple[str, float]], float]:
    """``[(op, ms on one 32 x 224 clip)]``, and the policy's expected ms per clip."""
    import random
    import time

    import numpy as np

    from kit.randaugment import ClipRandAugment

    ra = ClipRandAugment(spec, {"translate_const": int(224 * 0.45), "img_mean": (115, 115, 115)})
    clip = torch.from_numpy(np.random.default_rng(0).integers(0, 90, (32, 224, 224, 3), dtype=np.uint8))
    clip = clip.permute(0, 3, 1, 2)  # (T, C, H, W) stored channels last, as the crop leaves it
    random.seed(0)
    calls, plans = {}, [ra.sample() for _ in range(2000)]
    for plan in plans:
        for name, args, kwargs in plan:
            calls.setdefault(name, (args, kwargs))
    rows = []
    for name, (args, kwargs) in sorted(calls.items()):
        best = float("inf")
        for _ in range(repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            ra.apply(clip, name, args, kwargs)
            best = min(best, time.perf_counter() - start)
        rows.append((name, best * 1000))
    cost = dict(rows)
    per_clip = sum(cost[name] for plan in plans for name, _, _ in plan) / len(plans)
    return rows, per_clip


def profile_adapt_bn(
    *, model: str, batches: int, top: int, device: str = "cpu", frames: int = 8, size: int = 64, batch: int = 4,
    split_blocks_per_sm: int | None = None, stats_kernel: str | None = None,
) -> tuple[dict, list[tuple[str, float, float, int]]]:
    """Total ms of each pass, and ``[(operator, inference ms, Adapt BN ms, calls)]`` by difference:
    own CPU time on the CPU, own GPU time on CUDA (kernels by name). ``split_blocks_per_sm`` and
    ``stats_kernel`` set :data:`kit.adapt_bn.SPLIT_BLOCKS_PER_SM` and :data:`kit.adapt_bn.STATS_KERNEL`
    for the run (None: the kit's)."""
    from torch.profiler import ProfilerActivity, profile

    import kit.adapt_bn
    from bench.adapt_bn import _inference_pass
    from kit.adapt_bn import adapt_bn
    from kit.models import create_model

    device = torch.device(device)
    cuda = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(batch, 3, frames, size, size, generator=g).to(device) for _ in range(batches)]
    net = create_model(model, num_classes=11).to(device)
    kept = kit.adapt_bn.SPLIT_BLOCKS_PER_SM, kit.adapt_bn.STATS_KERNEL
    if split_blocks_per_sm is not None:
        kit.adapt_bn.SPLIT_BLOCKS_PER_SM = split_blocks_per_sm
    if stats_kernel is not None:
        kit.adapt_bn.STATS_KERNEL = stats_kernel
    try:
        _inference_pass(net, clips, device)  # warm-up
        adapt_bn(net, clips, num_batches=batches, device=device)
        passes = {}
        activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
        for name, run in (("inference", lambda: _inference_pass(net, clips, device)),
                          ("adapt_bn", lambda: adapt_bn(net, clips, num_batches=batches, device=device))):
            with profile(activities=activities) as prof:
                run()
                if cuda:
                    torch.cuda.synchronize(device)
            passes[name] = {
                e.key: ((e.self_device_time_total if cuda else e.self_cpu_time_total) / 1000, e.count)
                for e in prof.key_averages()
            }
    finally:
        kit.adapt_bn.SPLIT_BLOCKS_PER_SM, kit.adapt_bn.STATS_KERNEL = kept
    totals = {name: sum(ms for ms, _ in ops.values()) for name, ops in passes.items()}
    keys = set(passes["inference"]) | set(passes["adapt_bn"])
    rows = [(k, passes["inference"].get(k, (0.0, 0))[0], *passes["adapt_bn"].get(k, (0.0, 0))) for k in keys]
    rows.sort(key=lambda r: -abs(r[2] - r[1]))
    return totals, rows[:top]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hotspots", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    lo = sub.add_parser("loader", help="cProfile of the 32 x 224 loader")
    lo.add_argument("--train", action="store_true", help="the train loader (default: eval)")
    lo.add_argument("--clips", type=int, default=16)
    lo.add_argument("--passes", type=int, default=3)
    lo.add_argument("--top", type=int, default=12)
    lo.add_argument("--cache", default="outputs/bench/cache")
    lo.add_argument("--workers", type=int, default=0,
                    help="also profile inside this many DataLoader workers and compare with the main process")
    ra = sub.add_parser("randaugment", help="each RandAugment op on a 32 x 224 clip")
    ra.add_argument("--spec", default="rand-m7-n4-mstd0.5")
    ab = sub.add_parser("adapt_bn", help="torch profiler of inference and Adapt BN")
    ab.add_argument("--model", default="slowfast_tiny")
    ab.add_argument("--batches", type=int, default=16)
    ab.add_argument("--top", type=int, default=8)
    ab.add_argument("--device", default="cpu")
    ab.add_argument("--frames", type=int, default=8)
    ab.add_argument("--size", type=int, default=64)
    ab.add_argument("--batch", type=int, default=4)
    ab.add_argument("--split-blocks-per-sm", type=int, default=None, help="kit.adapt_bn.SPLIT_BLOCKS_PER_SM (CUDA)")
    ab.add_argument("--stats-kernel", default=None, help="kit.adapt_bn.STATS_KERNEL (CUDA: pytorch, triton)")
    args = ap.parse_args(argv)
    if getattr(args, "device", "cpu") == "cpu":
        torch.set_num_threads(1)
    if args.what == "loader" and args.workers:
        rates, usage, rows = profile_loader_workers(
            train=args.train, clips=args.clips, passes=args.passes, top=args.top, cache=Path(args.cache),
            workers=args.workers,
        )
        print(f"{'train' if args.train else 'eval'} loader, 32 x 224: {rates['main']:.1f} clips/s in the main process, "
              f"{rates['workers']:.1f} with {args.workers} workers ({rates['per worker']:.1f} a worker); profiled, "
              "so slower than timed")
        print(f"CPU time per clip, all functions: {rates['main CPU ms per clip']:.1f} ms in the main process, "
              f"{rates['workers CPU ms per clip']:.1f} ms in the workers")
        print(f"{'per clip (getrusage)':60s} {'main':>12s} {'workers':>15s}")
        for name in USAGE.values():
            print(f"{name:60s} {usage['main'][name]:12.2f} {usage['workers'][name]:15.2f}")
        print(f"{'function (own CPU time)':60s} {'main ms/clip':>12s} {'workers ms/clip':>15s}")
        for name, main_ms, worker_ms in rows:
            print(f"{name[:60]:60s} {main_ms:12.2f} {worker_ms:15.2f}")
    elif args.what == "loader":
        rows = profile_loader(train=args.train, clips=args.clips, passes=args.passes, top=args.top, cache=Path(args.cache))
        print(f"{'train' if args.train else 'eval'} loader, 32 x 224, 0 workers: own time per clip")
        for name, ms in rows:
            print(f"{ms:8.2f} ms  {name}")
    elif args.what == "randaugment":
        rows, per_clip = profile_randaugment(spec=args.spec)
        print(f"{args.spec} on 32 x 224 x 224, one core: ms per op")
        for name, ms in rows:
            print(f"{ms:8.2f} ms  {name}")
        print(f"{per_clip:8.2f} ms  per clip on average (the ops of 2000 sampled plans)")
    else:
        totals, rows = profile_adapt_bn(
            model=args.model, batches=args.batches, top=args.top, device=args.device, frames=args.frames,
            size=args.size, batch=args.batch, split_blocks_per_sm=args.split_blocks_per_sm,
            stats_kernel=args.stats_kernel,
        )
        where = "1 thread" if args.device == "cpu" else f"{args.device}, GPU time"
        print(f"{args.model}, {args.batches} batches of {args.batch} x {args.frames} x {args.size}, {where}: "
              f"inference {totals['inference']:.1f} ms, Adapt BN {totals['adapt_bn']:.1f} ms (profiled, so slower than timed)")
        print(f"{'operator':60s} {'inference ms':>12s} {'Adapt BN ms':>12s} {'calls':>6s}")
        for name, inf, ada, calls in rows:
            print(f"{name[:60]:60s} {inf:12.1f} {ada:12.1f} {calls:6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
