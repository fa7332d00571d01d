"""The benchmark suite: one table of the kit's speed and memory against its targets.

::

    python -m bench [--device cpu|cuda] [--quick] [--demo-run outputs/demo]
                    [--only loader,models,adapt_bn,pipeline] [--out outputs/bench] [--cache DIR]
                    [--threads N]

The device defaults to CUDA when one is present (full-size models, bf16, 32 x 224), else the CPU
(tiny models). The header of the table names the machine, its load, torch and its threads.

Sections (each line: what was measured, value, unit, the ideal and the target, met or missed):

- ``loader``: the kit's eval and train loaders against raw decord ``get_batch`` of the same
  clips (ratio of clips/s; 1.0 = no overhead over decoding), with 0 and N workers, on synthetic
  sets at the demo's size and at 32 frames x 224 (generated once into ``--cache``, by default
  ``<out>/cache``);
- ``models``: forward and forward+backward clips/s and memory of the tiny models (CPU) or the
  full-size ones (CUDA, bf16, 32 x 224), and UniFormer attention through SDPA against plain;
- ``adapt_bn``: Adapt BN time over one inference pass of the same batches;
- ``pipeline``: papermill overhead per notebook, and the stage wall times and peak RAM that a
  finished ``make demo`` run recorded in its done-markers (nothing of the demo is re-run).

Targets are reported, never asserted: a missed target prints ``missed``; ``python -m bench.hotspots``
shows where the time of the loaders and of Adapt BN goes. ``--quick`` shrinks
every input (for the tests): its numbers say that the suite runs, not how fast the kit is.
The table is printed and written to ``<out>/<YYYY-MM-DD_HHMMSS>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SECTIONS = ("loader", "models", "adapt_bn", "pipeline")
ROOT = Path(__file__).resolve().parent.parent
DEMO_PARAMS = ROOT / "params/demo.yaml"
REFERENCE_PARAMS = ROOT / "params/arid_uniformer_b32_k600.yaml"  # the 32 x 224 recipe: its augmentations
TINY_MODELS = ("uniformer_tiny", "mvit_tiny", "slowfast_tiny")
GPU_MODELS = ("uniformer_b", "mvit_b", "slowfast_r101")

# sizes of every measurement: full CPU, full CUDA, and --quick (tests)
SIZES = {
    "cpu": dict(
        # demo-size passes of 128 clips and 5 Adapt BN repeats: shorter ones moved by +-0.1 run to run;
        # 32 clips at 32 x 224, as the train loader's cost depends on each clip's RandAugment draws
        demo_clips_per_class=16, demo_max_clips=128, large_classes=2, large_clips_per_class=16,
        large_size=224, large_frames=32,
        loader_repeats=3, models=TINY_MODELS, model_frames=8, model_size=64, model_batch=2,
        amp="none", min_seconds=1.0, attention_model="uniformer_tiny",
        adapt_models=("uniformer_tiny", "slowfast_tiny"), adapt_frames=8, adapt_size=64,
        adapt_batch=4, adapt_batches=16, adapt_repeats=5, papermill_repeats=3,
    ),
    "cuda": dict(
        # loader sets of 128 and 64 clips: 8 workers get 2 to 4 batches each (16 clips gave them one)
        demo_clips_per_class=16, demo_max_clips=128, large_classes=4, large_clips_per_class=16,
        large_size=224, large_frames=32,
        loader_repeats=2, models=GPU_MODELS, model_frames=32, model_size=224, model_batch=4,
        amp="bf16", min_seconds=2.0, attention_model="uniformer_b",
        # Adapt BN at the kit's own batch (params/base.yaml adapt_bn.batch_size: 8)
        adapt_models=("uniformer_b", "slowfast_r101"), adapt_frames=32, adapt_size=224,
        adapt_batch=8, adapt_batches=8, adapt_repeats=5, papermill_repeats=3,
    ),
    "quick": dict(
        demo_clips_per_class=1, demo_max_clips=4, large_classes=2, large_clips_per_class=1,
        large_size=112, large_frames=16,
        loader_repeats=1, models=TINY_MODELS, model_frames=4, model_size=32, model_batch=2,
        amp="none", min_seconds=0.01, attention_model="uniformer_tiny",
        adapt_models=("uniformer_tiny",), adapt_frames=8, adapt_size=64,
        adapt_batch=2, adapt_batches=2, adapt_repeats=1, papermill_repeats=1,
    ),
}


@dataclass
class Line:
    """One measurement. ``target`` is ``(">=" or "<=", bound)`` where the issue sets one."""

    section: str
    measured: str
    value: float | None
    unit: str
    ideal: str
    target: tuple[str, float] | None = None
    note: str = ""

    @property
    def result(self) -> str:
        if self.target is None:
            return ""
        if self.value is None:
            return "not measured"
        op, bound = self.target
        ok = self.value >= bound if op == ">=" else self.value <= bound
        return "met" if ok else "missed"

    def ideal_text(self) -> str:
        if self.target is None:
            return self.ideal
        return f"{self.ideal}; target {self.target[0]} {self.target[1]:g}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target"] = None if self.target is None else list(self.target)
        return {**d, "result": self.result}


# ---------------------------------------------------------------- sections


def _synthetic_set(cache: Path, *, size: int, clips_per_class: int, num_classes: int) -> Path:
    """A labelled-only synthetic set of 48-frame clips, generated once into ``cache``."""
    from kit import synth

    root = cache / f"synth_{size}px_{num_classes}x{clips_per_class}"
    if (root / "synth.json").is_file():  # written last by generate: the set is complete
        return root
    t0 = time.perf_counter()
    synth.generate(
        root, clips_per_class=clips_per_class, num_classes=num_classes, size=size, frames=48,
        pool_per_class=0, val_per_class=0, test_per_class=0, workers=min(os.cpu_count() or 1, 4),
    )
    log.info("generated %s in %.1f s", root, time.perf_counter() - t0)
    return root


def loader_lines(*, sizes: dict, cache: Path, workers: int, device: str) -> list[Line]:
    """Eval and train loader clips/s over raw decord's, at demo size and at 32 x 224, and the cost
    of finishing their uint8 batches on ``device``."""
    from bench import loader
    from kit.config import load_params
    from kit.transforms import EvalPreset

    demo = load_params(DEMO_PARAMS, []).data
    ref = load_params(REFERENCE_PARAMS, [])

    def source(size: int, crop: int, short_side: int | None) -> str:
        # what the eval loader does to the synthetic set's square frames before its crop
        short = EvalPreset(crop=crop, short_side=short_side).short_side
        return f"{size} px frames, " + ("no eval resize" if short == size else f"eval resize to {short}")

    settings = [
        (
            f"demo size ({demo.frames} frames, crop {demo.crop}; "
            f"{source(demo.synthetic_size, demo.crop, demo.short_side)})",
            _synthetic_set(cache, size=demo.synthetic_size, clips_per_class=sizes["demo_clips_per_class"], num_classes=8),
            dict(frames=demo.frames, crop=demo.crop, short_side=demo.short_side, randaugment=demo.randaugment,
                 random_erasing=demo.random_erasing, max_clips=sizes["demo_max_clips"], batch_size=8),
        ),
        (
            f"{sizes['large_frames']} frames x {sizes['large_size']} "
            f"({source(sizes['large_size'], sizes['large_size'], ref.data.short_side)}; "
            f"augmentations of {REFERENCE_PARAMS.name})",
            _synthetic_set(cache, size=sizes["large_size"], clips_per_class=sizes["large_clips_per_class"],
                           num_classes=sizes["large_classes"]),
            dict(frames=sizes["large_frames"], crop=sizes["large_size"], short_side=ref.data.short_side,
                 randaugment=ref.data.randaugment, random_erasing=ref.data.random_erasing,
                 max_clips=sizes["large_classes"] * sizes["large_clips_per_class"], batch_size=4),
        ),
    ]
    lines = []
    for label, root, opts in settings:
        rows = loader.run_benchmark(
            root, gamma=ref.eval.gamma, workers=(0, workers), repeats=sizes["loader_repeats"], device=device,
            **opts,
        )
        by = {(r["loader"], r.get("workers")): r for r in rows}
        for w in (0, workers):
            raw = by[("raw decord", w)]
            lines.append(Line(
                "loader", f"raw decord get_batch, {label}, {w} workers", raw["clips_per_s"], "clips/s",
                "higher is better (the baseline of the ratios below)", note=f"{raw['clips']} clips",
            ))
            for name, bound in (("kit eval", 0.8), ("kit train", 0.6)):
                r = by[(name, w)]
                lines.append(Line(
                    "loader", f"{name} loader / raw decode, {label}, {w} workers", r["ratio"], "x",
                    "1.0 = no overhead over raw decode", (">=", bound),
                    note=f"{r['clips_per_s']} vs {raw['clips_per_s']} clips/s; uint8 clips, finished on the device",
                ))
        for name, what in (("kit eval", "float32, mean/std"), ("kit train", "float32, mean/std, random erasing")):
            r = by[(f"{name} finish", None)]
            lines.append(Line(
                "loader", f"{name} batches finished on {r['device']} ({what}), {label}", r["ms_per_clip"],
                "ms/clip", "lower is better; runs where the model runs, after the loader",
            ))
    return lines


def model_lines(*, sizes: dict, device: str) -> list[Line]:
    """Forward and forward+backward clips/s and memory per model; SDPA over plain attention."""
    from bench import models

    rows, attention = models.run_benchmark(
        models=list(sizes["models"]), device=device, amp=sizes["amp"], frames=sizes["model_frames"],
        size=sizes["model_size"], batch=sizes["model_batch"], min_seconds=sizes["min_seconds"],
        attention_model=sizes["attention_model"],
    )
    shape = f"batch {sizes['model_batch']}, {sizes['model_frames']} x {sizes['model_size']}"
    lines = []
    for r in rows:
        where = f"{r['model']} ({r['params_M']:.1f} M params), {shape}, amp {r['amp']}"
        lines += [
            Line("models", f"{where}: forward", r["fwd_clips_s"], "clips/s", "higher is better"),
            Line("models", f"{where}: forward+backward", r["fwdbwd_clips_s"], "clips/s", "higher is better"),
        ]
        if r["peak_mem_MiB"] is not None:
            lines.append(Line("models", f"{where}: peak CUDA memory of a training step", r["peak_mem_MiB"],
                              "MiB", "lower is better"))
        lines.append(Line("models", f"{where}: activations saved for backward", r["saved_MiB"], "MiB",
                          "lower is better", note="CPU has no peak-memory counter" if r["peak_mem_MiB"] is None else ""))
    if attention:
        sdpa = attention[1]
        for key, what in (("fwd_speedup_vs_plain", "forward"), ("speedup_vs_plain", "forward+backward")):
            lines.append(Line(
                "models", f"{sdpa['model']} SDPA / plain attention, {what}, {shape}", sdpa[key], "x",
                "> 1.0 = SDPA faster than softmax(QK^T)V on the same weights",
            ))
    return lines


def adapt_bn_lines(*, sizes: dict, device: str) -> list[Line]:
    """Adapt BN time over one inference pass of the same batches, per model."""
    from bench import adapt_bn

    rows = adapt_bn.run_benchmark(
        models=sizes["adapt_models"], device=device, batches=sizes["adapt_batches"], batch_size=sizes["adapt_batch"],
        frames=sizes["adapt_frames"], size=sizes["adapt_size"], repeats=sizes["adapt_repeats"],
    )
    return [
        Line(
            "adapt_bn",
            f"{r['model']} Adapt BN / one inference pass, {r['batches']} batches of {r['batch_size']} x "
            f"{r['frames']} x {r['size']}",
            r["ratio"], "x", "1.0 = Adapt BN costs one inference pass", ("<=", 1.1),
            note=f"{r['adapt_s']:.3f} s vs {r['infer_s']:.3f} s, {r['bn_layers']} BatchNorm layers",
        )
        for r in rows
    ]


def pipeline_lines(*, sizes: dict, demo_run: Path) -> list[Line]:
    """Papermill overhead per notebook, then :func:`demo_run_lines` of ``demo_run``."""
    from bench import pipeline
    from kit.pipeline import kernel_name

    kernel = kernel_name()
    lines = []
    for label, setup in (("kernel start", ""), ("kernel start + the notebooks' imports", pipeline.NOTEBOOK_IMPORTS)):
        over = pipeline.papermill_overhead(repeats=sizes["papermill_repeats"], kernel=kernel, setup=setup)
        lines.append(Line(
            "pipeline", f"papermill overhead per notebook: {label} ({kernel} kernel)", over["median_s"], "s",
            "0 = notebooks cost what their code costs", ("<=", 3.0),
            note=f"median of {over['repeats']}; papermill execution + HTML render, as kit.pipeline runs a step",
        ))
    return lines + demo_run_lines(demo_run)


def demo_run_lines(demo_run: Path) -> list[Line]:
    """Stage wall times, their total and the peak RAM that a ``make demo`` run recorded (not re-run)."""
    from bench import pipeline

    demo_run = Path(demo_run)
    record = pipeline.read_run(demo_run)
    if record is None:
        hint = f"no run in {demo_run}: run make demo first"
        return [
            Line("pipeline", "make demo total (sum of stage wall times)", None, "s", "lower is better",
                 ("<=", 600.0), note=hint),
            Line("pipeline", "make demo peak RAM", None, "GB", "lower is better", ("<=", 4.0), note=hint),
        ]
    lines = [
        Line("pipeline", f"{demo_run} stage {s['step']}", s["seconds"], "s", "lower is better")
        for s in record.steps
    ]
    missing = ""
    if record.missing:
        shown = ", ".join(record.missing[-3:])
        missing = (f"incomplete run: {len(record.missing)} of {len(record.missing) + len(record.steps)} planned "
                   f"steps have no done-marker ({'... ' if len(record.missing) > 3 else ''}{shown})")
    lines.append(Line(
        "pipeline", "make demo total (sum of stage wall times)", record.total_s if record.complete else None, "s",
        "lower is better", ("<=", 600.0),
        note=missing or f"{len(record.steps)} steps; runner start-up and the final report not counted",
    ))
    peak = record.peak_rss_MiB
    if peak is None:
        note = "no peak_rss_MiB in the done-markers: a run from before kit.pipeline recorded it, rerun make demo"
    else:
        note = f"largest peak_rss_MiB of the done-markers: {peak:.0f} MiB"
    if missing:  # the unfinished steps may need more: no verdict on a part of the run
        note, peak = f"{note}; {missing}", None
    lines.append(Line(
        "pipeline", "make demo peak RAM (runner + largest notebook kernel)",
        None if peak is None else peak * 2**20 / 1e9, "GB", "lower is better", ("<=", 4.0), note=note,
    ))
    return lines


# ---------------------------------------------------------------- report


def machine(device: str) -> dict:
    """CPU model, cores, load, torch version and threads, and the device of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def render(report: dict) -> str:
    """The report as Markdown: a header (date, command, machine) and one table, padded to read as text."""
    m = report["machine"]
    gpu = f" ({m['gpu']})" if m.get("gpu") else ""
    head = [
        f"# nightkit benchmark, {report['date']}",
        "",
        f"- command: `{report['command']}`" + (" (quick: tiny inputs, not representative)" if report["quick"] else ""),
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), load average "
        f"{m['load_average_1min']} at start; Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads); "
        f"device {m['device']}{gpu}",
        f"- git commit: {report['git_commit']}; took {report['seconds']:.0f} s; load average "
        f"{report['load_average_end']} at the end",
    ]
    busy = max(m["load_average_1min"] or 0, report["load_average_end"] or 0)
    if busy >= m["usable_cores"]:
        head.append(
            f"- the machine was busy (load {busy} on {m['usable_cores']} cores): CPU timings are noisy, "
            "multi-threaded steps most (rerun on an idle machine, or with --threads 1)"
        )
    head.append("")
    cols = ["section", "measured", "value", "unit", "ideal / target", "result", "note"]
    cells = [cols] + [
        [d["section"], d["measured"], _fmt(d["value"]), d["unit"], d["ideal_text"], d["result"], d["note"]]
        for d in report["lines"]
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    rows = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    rows.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    targeted = [d for d in report["lines"] if d["target"] is not None]
    missed = [d["measured"] for d in targeted if d["result"] == "missed"]
    unmeasured = sum(d["result"] == "not measured" for d in targeted)
    tail = [
        "",
        f"targets: {sum(d['result'] == 'met' for d in targeted)} met, {len(missed)} missed, "
        f"{unmeasured} not measured, of {len(targeted)}",
    ]
    tail += [f"- missed: {name}" for name in missed]
    tail += [f"- section {name} failed: {err}" for name, err in report["errors"].items()]
    return "\n".join(head + rows + tail) + "\n"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """``<out_dir>/<YYYY-MM-DD_HHMMSS>.json`` and ``.md`` of the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / report["stamp"]
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(render(report))
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def _sections(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--only {text!r}: sections are {', '.join(SECTIONS)}")
    return chosen


def run_suite(
    *, device: str = "cpu", quick: bool = False, demo_run="outputs/demo", only=SECTIONS, out_dir="outputs/bench",
    command: str = "", threads: int | None = None, cache_dir=None,
) -> dict:
    """Run the chosen sections and write the report; returns it (``lines``, ``machine``, ``errors``...).

    The loaders' synthetic sets are generated once into ``cache_dir`` (default: ``<out_dir>/cache``).

    ``threads``: torch CPU threads during the suite (None: torch's default, all cores; ``quick``
    uses 1, since on a busy machine a 2-thread step can wait 100x its work on the other thread).
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: no CUDA device here (torch {torch.__version__})")
    if threads is None and quick:
        threads = 1
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_sections(
            device=device, quick=quick, demo_run=demo_run, only=only, out_dir=out_dir, command=command,
            cache_dir=cache_dir,
        )
    finally:
        torch.set_num_threads(before)


def _run_sections(*, device: str, quick: bool, demo_run, only, out_dir, command: str, cache_dir=None) -> dict:
    from kit.config import git_commit

    sizes = SIZES["quick" if quick else ("cuda" if device.startswith("cuda") else "cpu")]
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    workers = min(8, os.cpu_count() or 1)
    now = datetime.now(timezone.utc)
    report = {
        "date": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "stamp": now.strftime("%Y-%m-%d_%H%M%S"),
        "command": command,
        "quick": quick,
        "machine": machine(device),
        "git_commit": git_commit(),
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        "lines": [],
        "errors": {},
    }
    jobs = {
        "loader": lambda: loader_lines(sizes=sizes, cache=cache, workers=workers, device=device),
        "models": lambda: model_lines(sizes=sizes, device=device),
        "adapt_bn": lambda: adapt_bn_lines(sizes=sizes, device=device),
        "pipeline": lambda: pipeline_lines(sizes=sizes, demo_run=Path(demo_run)),
    }
    t0 = time.perf_counter()
    for name in SECTIONS:
        if name not in only:
            continue
        start = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            lines = jobs[name]()
        except Exception as exc:  # one broken section must not hide the others' numbers
            log.exception("section %s failed", name)
            report["errors"][name] = f"{exc.__class__.__name__}: {exc}"
            continue
        report["lines"] += [{**ln.to_dict(), "ideal_text": ln.ideal_text()} for ln in lines]
        print(f"[bench] {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    report["seconds"] = time.perf_counter() - t0
    report["load_average_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    report["files"] = [str(p) for p in write_report(report, out_dir)]
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when present, else cpu)")
    ap.add_argument("--quick", action="store_true", help="tiny inputs (tests): shows the suite runs, not speed")
    ap.add_argument("--demo-run", default="outputs/demo", help="finished run whose timings are read")
    ap.add_argument("--only", type=_sections, default=list(SECTIONS), help=f"comma-separated of {','.join(SECTIONS)}")
    ap.add_argument("--out", default="outputs/bench", help="folder of the .json/.md reports")
    ap.add_argument("--cache", default=None, help="folder of the generated synthetic sets (default: <out>/cache)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = "python -m bench" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = run_suite(
        device=device, quick=args.quick, demo_run=args.demo_run, only=args.only, out_dir=args.out,
        command=command, threads=args.threads, cache_dir=args.cache,
    )
    print(render(report))
    print(f"written: {', '.join(report['files'])}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
