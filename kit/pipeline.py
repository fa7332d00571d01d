"""Run the notebooks of the method in sequence with papermill, then write the run's report.

::

    python -m kit.pipeline run params/demo.yaml [--set key=value ...] [--from STAGE] [--only STAGE]
                                                [--dry-run] [--force]

Each step is one notebook executed into ``outputs/<run>/notebooks/``. A step that finished
with the same resolved parameters leaves a done-marker and is skipped on the next call, so an
interrupted run continues where it stopped. A run folder holding other parameters is never
overwritten: the run goes to ``outputs/<run>-2`` (then ``-3``...).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kit import __version__
from kit.config import Params, ParamsError, git_commit, load_params, params_hash, save_params
from kit.layout import RunLayout

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "nightkit"

# pipeline stage -> notebook; the order is the method's
STAGE_NOTEBOOKS = {
    "data": "00_data",
    "supervised": "10_supervised",
    "adapt_bn": "20_adapt_bn",
    "pseudo": "30_pseudo_label",
    "ensemble": "40_ensemble",
    "confusion": "50_confusion",
}


@dataclass
class Step:
    stage: str
    model: str | None = None
    round: int | None = None
    parameters: dict = field(default_factory=dict)

    @property
    def notebook(self) -> str:
        return STAGE_NOTEBOOKS[self.stage]

    @property
    def name(self) -> str:
        return self.notebook + (f"_{self.model}" if self.model else "") + (f"_r{self.round}" if self.round else "")

    def describe(self) -> str:
        bits = [self.stage] + ([self.model] if self.model else []) + ([f"round {self.round}"] if self.round else [])
        return " ".join(bits)


def plan(params: Params) -> list[Step]:
    """The steps of a run, in order: data, per model supervised and Adapt BN, rounds, ensemble, confusion."""
    labels = [m.label for m in params.models]
    steps = [Step("data")]
    steps += [Step("supervised", m) for m in labels]
    steps += [Step("adapt_bn", m) for m in labels]
    for r in range(1, params.pseudo.rounds + 1):
        steps += [Step("pseudo", m, r) for m in labels]
    steps += [Step("ensemble"), Step("confusion")]
    for s in steps:
        s.parameters = {k: v for k, v in (("model", s.model), ("round", s.round)) if v is not None}
    return steps


# ---------------------------------------------------------------- run folders


def _comparable(params_dict: dict) -> dict:
    # the run name differs between outputs/<run> and outputs/<run>-2 by design
    return {k: v for k, v in params_dict.items() if k not in ("kit_version", "git_commit", "run")}


def _diff(a: dict, b: dict, prefix="") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _diff(a[k], b[k], key + ".")
        elif a.get(k) != b.get(k):
            out.append(f"{key}: {a.get(k)!r} -> {b.get(k)!r}")
    return out


def run_folder(params: Params) -> tuple[Path, list[str]]:
    """The folder of this run: ``outputs/<run>`` if free or holding the same parameters, else ``<run>-N``."""
    wanted = _comparable(params.to_dict())
    base = Path(params.output_root) / params.run
    candidate, n, first_diff = base, 1, []
    while True:
        saved = candidate / "params.yaml"
        if not candidate.exists() or (not saved.exists() and not any(candidate.iterdir())):
            return candidate, first_diff
        if saved.exists():
            old = _comparable(yaml.safe_load(saved.read_text()) or {})
            if old == wanted:
                return candidate, first_diff
            if not first_diff:
                first_diff = _diff(old, wanted)
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")


def _marker(layout: RunLayout, step: Step) -> Path:
    return layout.root / "notebooks" / f"{step.name}.done.json"


def _step_hash(params: Params, step: Step) -> str:
    return params_hash({"params": _comparable(params.to_dict()), "step": step.name, **step.parameters})


def is_done(layout: RunLayout, params: Params, step: Step) -> bool:
    m = _marker(layout, step)
    return m.exists() and json.loads(m.read_text()).get("hash") == _step_hash(params, step)


# ---------------------------------------------------------------- execution


def kernel_name() -> str:
    """The ``nightkit`` kernel when registered (``make env`` does it), else this interpreter's ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL in KernelSpecManager().find_kernel_specs():
        return KERNEL
    log.warning("Jupyter kernel %r is not registered (run `make env`); using python3", KERNEL)
    return "python3"


@contextlib.contextmanager
def private_kernel():
    """Keyword arguments for papermill that start a notebook's kernel on Unix sockets in a folder of
    its own (mode 700, removed afterwards) instead of on localhost TCP ports, where its traffic is
    plain text to every user of the machine (ipykernel 7 warns of it at each start). Off POSIX,
    none: the kernel keeps TCP."""
    if os.name != "posix":
        yield {}
        return
    from traitlets.config import Config

    with tempfile.TemporaryDirectory(prefix="nightkit-kernel-") as folder:
        config = Config()
        config.KernelManager.transport = "ipc"
        # without a folder, ipc sockets are "kernel-ipc-N" in the kernel's working directory
        config.KernelManager.ip = os.path.join(folder, "kernel")
        yield {"config": config}


def execute(step: Step, layout: RunLayout, *, kernel: str, progress: bool = True) -> float:
    """Execute one notebook with papermill into the run folder and render it to HTML; return seconds."""
    import papermill as pm

    src = NOTEBOOKS / f"{step.notebook}.ipynb"
    out = layout.root / "notebooks" / f"{step.name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    parameters = {"params_file": str(layout.params.resolve()), "overrides": [], **step.parameters}
    t0 = time.time()
    with private_kernel() as transport:
        pm.execute_notebook(
            str(src), str(out), parameters=parameters, kernel_name=kernel, cwd=str(ROOT),
            progress_bar=progress, log_output=False, report_mode=False, **transport,
        )
    seconds = time.time() - t0
    render_html(out)
    return seconds


def render_html(notebook: Path) -> Path:
    """The executed notebook as HTML without code cells (widgets do not survive; static outputs do)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    _describe_figures(nb)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    page = notebook.with_suffix(".html")
    page.write_text(body, encoding="utf-8")
    return page


def _describe_figures(nb) -> None:
    """Give every PNG figure of ``nb`` (in memory) an HTML form with alternative text: the first line
    of the nearest markdown cell above it (a section's heading, or the sentence that introduces the
    figure), numbered when several figures share it. nbconvert's template writes PNGs without one
    (it then fills in "No description has been provided" and logs a warning per notebook)."""
    section, figures = "", []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            heading = next((line.lstrip("#").strip() for line in cell.source.splitlines() if line.strip()), "")
            if heading:
                section = heading.replace("**", "").replace("`", "")
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data and "text/html" not in data:
                figures.append((section, data))
    counts = Counter(s for s, _ in figures)
    seen = Counter()
    for section, data in figures:
        seen[section] += 1
        alt = f"Figure: {section}" + (f" ({seen[section]} of {counts[section]})" if counts[section] > 1 else "")
        data["text/html"] = f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data["image/png"].strip()}">'


def select_steps(steps: list[Step], *, start: str | None, only: str | None) -> list[Step]:
    """Steps to consider: all, from ``start`` on, or those of ``only`` (stage names of STAGE_NOTEBOOKS)."""
    for name, value in (("--from", start), ("--only", only)):
        if value is not None and value not in STAGE_NOTEBOOKS:
            raise ParamsError(f"{name} {value!r} is not a stage; stages: {', '.join(STAGE_NOTEBOOKS)}")
    if only:
        return [s for s in steps if s.stage == only]
    if start:
        first = next(i for i, s in enumerate(steps) if s.stage == start)
        return steps[first:]
    return steps


def run(
    params_file,
    overrides=(),
    *,
    start: str | None = None,
    only: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: bool = True,
    out=sys.stdout,
) -> int:
    """Run (or with ``dry_run`` only plan) the pipeline. Returns a process exit code."""
    params = load_params(params_file, list(overrides))  # bad params fail here, before any work
    folder, diff = run_folder(params)
    if folder != Path(params.output_root) / params.run:
        print(
            f"{Path(params.output_root) / params.run} holds a run with other parameters "
            f"({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}); this run goes to {folder}",
            file=out,
        )
        params.run = folder.name
    layout = RunLayout(folder)
    steps = plan(params)
    chosen = select_steps(steps, start=start, only=only)
    # --from and --only rerun what they name; otherwise finished steps are skipped
    rerun = force or bool(start or only)
    todo = [s for s in chosen if rerun or not is_done(layout, params, s)]

    print(f"run {params.run!r} -> {folder}", file=out)
    print(f"models: {', '.join(f'{m.label} ({m.name})' for m in params.models)}", file=out)
    for i, s in enumerate(steps, 1):
        state = "todo" if s in todo else ("done" if is_done(layout, params, s) else "skip")
        print(f"  {i:2d}. [{state:4s}] {s.notebook:16s} {s.describe()}", file=out)
    if dry_run:
        print("dry run: nothing executed", file=out)
        return 0

    if not layout.params.exists():
        # a resumed run keeps the record of the code that started it; each step's marker names its own
        save_params(params, layout.params)
    code = {"kit_version": __version__, "git_commit": git_commit()}
    kernel = kernel_name()
    for n, step in enumerate(todo, 1):
        print(f"[{n}/{len(todo)}] {step.describe()} ({step.notebook}.ipynb)", file=out, flush=True)
        try:
            seconds = execute(step, layout, kernel=kernel, progress=progress)
        except Exception as exc:
            nb = layout.root / "notebooks" / f"{step.name}.ipynb"
            resume = f"python -m kit.pipeline run {params_file}" + "".join(f" --set {o}" for o in overrides)
            print(
                f"\nFAILED at {step.describe()}: {exc.__class__.__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}\n"
                f"  open the executed notebook: {nb}\n"
                f"  resume (finished steps are skipped): {resume}",
                file=out,
            )
            return 1
        # runner + largest finished child (the kernel) so far, KiB on Linux: an upper bound of both at once
        rss_kib = sum(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        _marker(layout, step).write_text(
            json.dumps({
                "hash": _step_hash(params, step), "seconds": seconds, "finished": time.time(),
                "peak_rss_MiB": round(rss_kib / 1024, 1), **code,
            })
        )
    from kit import report

    summary = report.write(params, layout, steps)
    print(report.ablation_text(summary), file=out)
    print(f"report: {layout.report}", file=out)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kit.pipeline", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the notebooks of a params file")
    r.add_argument("params", help="run file, e.g. params/demo.yaml (layered on params/base.yaml)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--from", dest="start", choices=list(STAGE_NOTEBOOKS), help="rerun from this stage on")
    r.add_argument("--only", choices=list(STAGE_NOTEBOOKS), help="rerun only this stage")
    r.add_argument("--dry-run", action="store_true", help="validate and print the plan")
    r.add_argument("--force", action="store_true", help="rerun finished steps too")
    r.add_argument("--no-progress", action="store_true", help="no per-cell progress bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # the runner prints its own progress
    try:
        return run(
            args.params, args.overrides, start=args.start, only=args.only, dry_run=args.dry_run,
            force=args.force, progress=not args.no_progress,
        )
    except ParamsError as exc:
        print(f"bad parameters: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
