"""Speed and memory of the registered video models, and UniFormer SDPA vs plain attention.

Run ``python bench/models.py`` (CPU, tiny models, 8 frames x 64 px) or, on a GPU,
``python bench/models.py --device cuda --amp bf16 --frames 32 --size 224 --batch 4
--models uniformer_b,mvit_b,slowfast_r101``. ``run_benchmark(...)`` returns the rows as dicts.
``--channels-last`` puts the models' weights in channels-last-3d memory, as the ``channels_last`` param
does in a run.

Numbers: clips/s = batch / median seconds per step (after warm-up, CUDA synchronised per step;
the median resists other processes on a shared CPU). SDPA and plain steps are interleaved.
Memory: ``peak_mem_MiB`` is ``torch.cuda.max_memory_allocated`` over one training step (CUDA only;
the CPU allocator has no such counter); ``saved_MiB`` is what autograd keeps for backward in one
training step (activations, parameter storages excluded), measured the same way on any device.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time

import torch

from kit.models import create_model, list_models

logger = logging.getLogger(__name__)

TINY = ("uniformer_tiny", "mvit_tiny", "slowfast_tiny")
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _peak_cuda_mib(step, device: torch.device) -> float | None:
    """Peak CUDA memory allocated during one ``step()``, in MiB (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_times(
    steps: dict, *, device: torch.device, warmup: int, min_seconds: float, max_iters: int
) -> dict[str, list[float]]:
    """Seconds per call of each step, the steps interleaved so that all see the same machine load."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    start = time.perf_counter()
    while len(next(iter(times.values()))) < max_iters and (
        not times[next(iter(times))] or time.perf_counter() - start < min_seconds * len(steps)
    ):
        for key, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
    return times


def _build(
    name: str, *, frames: int, size: int, num_classes: int, grad_checkpointing: bool = False,
    channels_last: bool = False,
) -> torch.nn.Module:
    # MViT and SlowFast are built for one input size; UniFormer runs any size
    family = name.split("_")[0]
    extra = dict(frames=frames, crop=size) if family in ("mvit", "slowfast") else {}
    model = create_model(name, num_classes=num_classes, **extra)
    if grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"{name} has no gradient checkpointing option")
        model.set_grad_checkpointing(True)
    if channels_last:  # as kit.stages.build_model with params.channels_last: the weights only
        model.to(memory_format=torch.channels_last_3d)
    return model


def _steps(
    model: torch.nn.Module, *, device: torch.device, amp: str, frames: int, size: int, batch: int
):
    """``forward()``, ``train_step()`` and ``saved_mib()`` on one random batch."""
    x = torch.randn(batch, 3, frames, size, size, device=device)
    target = torch.zeros(batch, dtype=torch.long, device=device)

    def autocast():
        if AMP[amp] is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=AMP[amp])

    def forward():
        model.eval()
        with torch.no_grad(), autocast():
            model(x)

    def train_step(hooks=contextlib.nullcontext):
        model.train()
        with hooks(), autocast():
            loss = torch.nn.functional.cross_entropy(model(x).float(), target)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def saved_mib() -> float:
        # bytes autograd keeps for backward (activations; parameter storages excluded), any device
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        train_step(lambda: torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        return sum(saved.values()) / 2**20

    return forward, train_step, saved_mib


def bench_model(
    model: torch.nn.Module,
    *,
    name: str,
    device: torch.device,
    amp: str = "none",
    frames: int = 8,
    size: int = 64,
    batch: int = 2,
    warmup: int = 5,
    min_seconds: float = 1.0,
    max_iters: int = 50,
) -> dict:
    """Forward / forward+backward clips/s (median step) and memory on ``(batch, 3, T, S, S)``."""
    model = model.to(device)
    forward, train_step, saved_mib = _steps(
        model, device=device, amp=amp, frames=frames, size=size, batch=batch
    )
    timing = dict(device=device, warmup=warmup, min_seconds=min_seconds, max_iters=max_iters)
    fwd = _step_times({"fwd": forward}, **timing)["fwd"]
    fwdbwd = _step_times({"fwdbwd": train_step}, **timing)["fwdbwd"]
    return dict(
        model=name,
        params_M=sum(p.numel() for p in model.parameters()) / 1e6,
        device=str(device),
        amp=amp,
        frames=frames,
        size=size,
        batch=batch,
        fwd_clips_s=batch / statistics.median(fwd),
        fwdbwd_clips_s=batch / statistics.median(fwdbwd),
        peak_mem_MiB=_peak_cuda_mib(train_step, device),
        saved_MiB=saved_mib(),
    )


def _saved_with(model: torch.nn.Module, impl: str, saved_mib) -> float:
    model.set_attn_impl(impl)
    return saved_mib()


def bench_attention(
    model: torch.nn.Module,
    *,
    name: str,
    device: torch.device,
    amp: str = "none",
    frames: int = 8,
    size: int = 64,
    batch: int = 2,
    warmup: int = 5,
    min_seconds: float = 1.0,
    max_iters: int = 50,
) -> list[dict]:
    """UniFormer with SDPA vs plain attention on the same weights, steps interleaved.

    Returns a ``plain`` and an ``sdpa`` row; the ``sdpa`` row holds the clips/s ratios.
    """
    model = model.to(device)
    forward, train_step, saved_mib = _steps(
        model, device=device, amp=amp, frames=frames, size=size, batch=batch
    )

    def using(impl, step):
        def run():
            model.set_attn_impl(impl)
            step()

        return run

    timing = dict(device=device, warmup=warmup, min_seconds=min_seconds, max_iters=max_iters)
    fwd = _step_times({i: using(i, forward) for i in ("plain", "sdpa")}, **timing)
    fwdbwd = _step_times({i: using(i, train_step) for i in ("plain", "sdpa")}, **timing)
    rows = []
    for impl in ("plain", "sdpa"):
        rows.append(
            dict(
                model=name,
                attn_impl=impl,
                device=str(device),
                amp=amp,
                frames=frames,
                size=size,
                batch=batch,
                fwd_clips_s=batch / statistics.median(fwd[impl]),
                fwdbwd_clips_s=batch / statistics.median(fwdbwd[impl]),
                peak_mem_MiB=_peak_cuda_mib(using(impl, train_step), device),
                saved_MiB=_saved_with(model, impl, saved_mib),
            )
        )
    plain, sdpa = rows
    sdpa["fwd_speedup_vs_plain"] = sdpa["fwd_clips_s"] / plain["fwd_clips_s"]
    sdpa["speedup_vs_plain"] = sdpa["fwdbwd_clips_s"] / plain["fwdbwd_clips_s"]
    return rows


def run_benchmark(
    *,
    models: list[str] | None = None,
    device: str = "cpu",
    amp: str = "none",
    frames: int = 8,
    size: int = 64,
    batch: int = 2,
    num_classes: int = 11,
    min_seconds: float = 1.0,
    attention_model: str | None = "uniformer_tiny",
    grad_checkpointing: bool = False,
    channels_last: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Benchmark ``models`` (default: the tiny variants) and UniFormer SDPA vs plain attention.

    Returns ``(model_rows, attention_rows)``; each attention row has ``attn_impl`` and, on the
    ``sdpa`` row, ``speedup_vs_plain`` (forward+backward clips/s ratio on the same weights).
    """
    dev = torch.device(device)
    names = list(models or TINY)
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise KeyError(f"unknown models {unknown}; registered: {list_models()}")
    common = dict(
        device=dev, amp=amp, frames=frames, size=size, batch=batch, min_seconds=min_seconds
    )
    rows = []
    for name in names:
        torch.manual_seed(0)
        logger.info("benchmarking %s", name)
        rows.append(
            bench_model(
                _build(
                    name,
                    frames=frames,
                    size=size,
                    num_classes=num_classes,
                    grad_checkpointing=grad_checkpointing,
                    channels_last=channels_last,
                ),
                name=name,
                **common,
            )
            | {"channels_last": channels_last}
        )
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    attention = []
    if attention_model:
        torch.manual_seed(0)
        model = _build(
            attention_model,
            frames=frames,
            size=size,
            num_classes=num_classes,
            grad_checkpointing=grad_checkpointing,
            channels_last=channels_last,
        )
        attention = bench_attention(model, name=attention_model, **common)
    return rows, attention


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Plain-text table of ``rows`` restricted to ``columns``."""
    cells = [columns] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=sorted(AMP), default="none")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", default=",".join(TINY), help="comma-separated registered names")
    parser.add_argument(
        "--attention-model",
        default="uniformer_tiny",
        help="UniFormer variant for SDPA vs plain ('' to skip)",
    )
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute activations")
    parser.add_argument(
        "--channels-last", action="store_true", help="models in channels-last-3d memory (params: channels_last)"
    )
    parser.add_argument(
        "--min-seconds", type=float, default=1.0, help="timed seconds per measurement"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows, attention = run_benchmark(
        models=[m for m in args.models.split(",") if m],
        device=args.device,
        amp=args.amp,
        frames=args.frames,
        size=args.size,
        batch=args.batch,
        min_seconds=args.min_seconds,
        grad_checkpointing=args.grad_checkpointing,
        attention_model=args.attention_model or None,
        channels_last=args.channels_last,
    )
    where = f"{args.device}" + (
        f" ({torch.cuda.get_device_name(args.device)})"
        if args.device.startswith("cuda")
        else f" ({torch.get_num_threads()} threads)"
    )
    print(
        f"# models on {where}, amp {args.amp}, grad checkpointing {args.grad_checkpointing}, "
        f"channels last {args.channels_last}, "
        f"input ({args.batch}, 3, {args.frames}, {args.size}, {args.size})"
    )
    print(
        format_table(
            rows,
            ["model", "params_M", "fwd_clips_s", "fwdbwd_clips_s", "peak_mem_MiB", "saved_MiB"],
        )
    )
    if attention:
        print(
            f"\n# {attention[0]['model']}: attention through SDPA vs plain softmax(QK^T)V, same weights"
        )
        print(
            format_table(
                attention,
                [
                    "attn_impl",
                    "fwd_clips_s",
                    "fwdbwd_clips_s",
                    "peak_mem_MiB",
                    "saved_MiB",
                    "fwd_speedup_vs_plain",
                    "speedup_vs_plain",
                ],
            )
        )


if __name__ == "__main__":
    main()
