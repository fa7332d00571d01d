"""Pipeline costs: papermill overhead per notebook, and the stage wall times and peak RAM of a run.

Run ``python bench/pipeline.py [RUN_DIR]`` (default ``outputs/demo``, written by ``make demo``).

- ``papermill_overhead``: executes a trivial parameterized notebook (one parameters cell, one
  cell of arithmetic, optionally the pipeline notebooks' imports) with papermill on the
  ``nightkit`` kernel (``python3`` when it is not registered), ``repeats`` times; each time is
  kernel start, parameter injection, execution, writing the output notebook and its HTML
  rendering: what every step of the pipeline pays besides its own work.
- ``read_run``: the run's own records, nothing re-executed: the ``seconds`` and ``peak_rss_MiB``
  of each done-marker ``notebooks/<step>.done.json`` (written by :mod:`kit.pipeline`), in the
  order of the run's plan, and whether every planned step finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_RUN = Path("outputs/demo")
ROOT = Path(__file__).resolve().parent.parent  # notebooks run here, as kit.pipeline runs them


# what the first cells of the pipeline's notebooks import: torch, pandas and the kit
NOTEBOOK_IMPORTS = "import kit.notebook\nfrom kit import stages, viz"


def _trivial_notebook(path: Path, setup: str) -> Path:
    """A two-cell notebook: a ``parameters`` cell and one that runs ``setup`` and uses the parameter."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1  # replaced by papermill")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(f"{setup}\ny = x + 1\ny")]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, str(path))
    return path


def papermill_overhead(*, repeats: int = 3, kernel: str | None = None, setup: str = "", render: bool = True) -> dict:
    """Seconds to execute a trivial notebook with papermill (and render it to HTML), ``repeats`` times.

    ``render``: include :func:`kit.pipeline.render_html` of the executed notebook, as each
    pipeline step does after papermill.
    ``setup``: code run first in the notebook's second cell (e.g. :data:`NOTEBOOK_IMPORTS`, to
    count what every pipeline notebook imports before its own work).
    Returns ``{kernel, repeats, seconds: [..], median_s}``; ``kernel`` None picks the one
    :func:`kit.pipeline.kernel_name` picks for a run.
    """
    import papermill as pm

    from kit.pipeline import kernel_name, private_kernel, render_html

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    kernel = kernel or kernel_name()
    times = []
    with tempfile.TemporaryDirectory(prefix="bench_papermill_") as tmp:
        src = _trivial_notebook(Path(tmp) / "trivial.ipynb", setup)
        for i in range(repeats):
            out = Path(tmp) / f"trivial_out{i}.ipynb"
            t0 = time.perf_counter()
            with private_kernel() as transport:  # as the pipeline starts its kernels
                pm.execute_notebook(
                    str(src), str(out), parameters={"x": i}, kernel_name=kernel,
                    progress_bar=False, log_output=False, cwd=str(ROOT), **transport,
                )
            if render:
                render_html(out)
            times.append(time.perf_counter() - t0)
    return {
        "kernel": kernel, "repeats": repeats, "render": render, "seconds": times,
        "median_s": statistics.median(times),
    }


@dataclass
class RunRecord:
    """What a run folder records about its own cost."""

    run_dir: Path
    steps: list[dict] = field(default_factory=list)  # {step, seconds, peak_rss_MiB (or None)} in plan order
    missing: list[str] = field(default_factory=list)  # planned steps without a done-marker

    @property
    def complete(self) -> bool:
        return bool(self.steps) and not self.missing

    @property
    def total_s(self) -> float:
        return sum(s["seconds"] for s in self.steps)

    @property
    def peak_rss_MiB(self) -> float | None:
        recorded = [s["peak_rss_MiB"] for s in self.steps if s["peak_rss_MiB"] is not None]
        return max(recorded) if recorded else None


def read_run(run_dir=DEFAULT_RUN) -> RunRecord | None:
    """The done-markers of a finished (or partial) run; None when ``run_dir`` holds no run.

    Steps are listed in the order of the plan of the run's own ``params.yaml`` (markers of steps
    not in the plan, e.g. from an older plan, are left out); without a readable ``params.yaml``
    the markers are listed by name.
    """
    run_dir = Path(run_dir)
    marker_dir = run_dir / "notebooks"
    markers = {p.name[: -len(".done.json")]: p for p in sorted(marker_dir.glob("*.done.json"))}
    if not markers:
        return None
    names = list(markers)
    if (run_dir / "params.yaml").is_file():
        from kit.config import read_saved_params
        from kit.pipeline import plan

        names = [s.name for s in plan(read_saved_params(run_dir / "params.yaml"))]
    record = RunRecord(run_dir)
    for name in names:
        if name not in markers:
            record.missing.append(name)
            continue
        try:
            done = json.loads(markers[name].read_text())
            seconds = float(done["seconds"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{markers[name]}: not a done-marker with 'seconds' ({exc})") from exc
        rss = done.get("peak_rss_MiB")
        record.steps.append(
            {"step": name, "seconds": seconds, "peak_rss_MiB": None if rss is None else float(rss)}
        )
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", default=str(DEFAULT_RUN))
    ap.add_argument("--repeats", type=int, default=3, help="papermill executions")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for label, setup in (("kernel start", ""), ("with the notebooks' imports", NOTEBOOK_IMPORTS)):
        over = papermill_overhead(repeats=args.repeats, setup=setup)
        print(f"papermill overhead, {label} ({over['kernel']} kernel): median {over['median_s']:.2f} s "
              f"of {', '.join(f'{s:.2f}' for s in over['seconds'])}")
    record = read_run(args.run_dir)
    if record is None:
        print(f"no run in {args.run_dir}: run make demo first")
        return 0
    for s in record.steps:
        print(f"{s['step']:32s} {s['seconds']:8.1f} s  peak RSS {s['peak_rss_MiB'] or 'n/a'} MiB")
    print(f"total {record.total_s:.1f} s" + (f"; missing: {', '.join(record.missing)}" if record.missing else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
