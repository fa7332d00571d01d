"""The run's report: ``summary.json`` (tables as data) and ``report.html`` (an index and the tables).

Every number comes from the files the stages wrote (``results.json``, predictions, selection
reports, done-markers); nothing is computed here that a stage did not measure.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from kit.config import Params, git_commit
from kit.layout import ENSEMBLE, RunLayout, stage_name

log = logging.getLogger(__name__)


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def stages_of(params: Params) -> list[str]:
    return ["supervised", "adapt_bn"] + [stage_name("pseudo", r) for r in range(1, params.pseudo.rounds + 1)]


def collect(params: Params, layout: RunLayout, steps=()) -> dict:
    """Gather the run's tables from what the stages wrote."""
    import torch

    from kit import __version__

    ablation, tta, pseudo_rows = [], [], []
    for m in params.models:
        for stage in stages_of(params):
            res = _read(layout.model_dir(m.label, stage) / "results.json")
            if res is None:
                continue
            row = {"model": m.label, "stage": stage}
            for split in ("val", "test"):
                if split in res:
                    row[f"top1_{split}"] = res[split]["top1"]
            row["top1"] = row.get("top1_val", row.get("top1_test"))
            ablation.append(row)
            for t in res.get("tta", []) or []:
                tta.append({"model": m.label, **{k: t[k] for k in ("gamma", "views", "crops", "top1")}})
    ens = _read(layout.model_dir(ENSEMBLE, ENSEMBLE) / "results.json")
    if ens:
        row = {"model": ENSEMBLE, "stage": ENSEMBLE, "of_stage": ens.get("stage")}
        for split in ("val", "test"):
            if split in ens:
                row[f"top1_{split}"] = ens[split]["top1"]
        row["top1"] = row.get("top1_val", row.get("top1_test"))
        ablation.append(row)
    for r in range(1, params.pseudo.rounds + 1):
        sel = _read(layout.pseudo_dir(r) / "selection.json")
        if sel:
            pseudo_rows.append({"round": r, **{k: v for k, v in sel.items() if not isinstance(v, (list, dict))}})
    timings = []
    for s in steps:
        marker = _read(layout.root / "notebooks" / f"{s.name}.done.json")
        if marker:
            timings.append({"step": s.name, "seconds": round(marker["seconds"], 2), "git_commit": marker.get("git_commit")})
    confusion = None
    val_ens = layout.predictions(ENSEMBLE, ENSEMBLE, "val")
    if val_ens.exists():
        from kit import predictions
        from kit.confusion import confusion_of

        cm = confusion_of(predictions.load(val_ens))
        confusion = {"split": "val", "model": ENSEMBLE, "matrix": cm.tolist()}
    return {
        "run": params.run,
        "protocol": params.protocol,
        "eval_split": "val" if params.data.val else "test",
        "ablation": ablation,
        "tta": tta,
        "pseudo": pseudo_rows,
        "ensemble": ens,
        "confusion": confusion,
        "timings": timings,
        "environment": {
            "kit_version": __version__,
            "git_commit": git_commit(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": params.device,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(),
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }


def ablation_text(summary: dict) -> str:
    """The ablation table in the paper's shape, as plain text: top-1 % per model and stage, one
    block per labelled list (val: held-out labelled dark clips; test: where its labels are known)."""
    rows = summary["ablation"]
    if not rows:
        return "(no results yet)"
    stages = list(dict.fromkeys(r["stage"] for r in rows if r["model"] != ENSEMBLE))
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = max(12, *(len(m) + 2 for m in models))
    blocks = []
    for split in ("val", "test"):
        table = {(r["model"], r["stage"]): r.get(f"top1_{split}") for r in rows}
        if all(v is None for v in table.values()):
            continue
        note = " (ensemble weights fitted here)" if split == "val" else ""
        lines = [
            f"top-1 % on {split}{note}, {summary['protocol']} protocol",
            "model".ljust(width) + "".join(s.rjust(11) for s in stages + [ENSEMBLE]),
        ]
        for m in models:
            cells = [table.get((m, s)) for s in stages + [ENSEMBLE]]
            lines.append(m.ljust(width) + "".join(f"{100 * v:11.1f}" if v is not None else "          -" for v in cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def gamma_label(gamma: float | None) -> str:
    """How tables name a TTA row's gamma: ``"off"``, or its value (``0.25``)."""
    return "off" if gamma is None or gamma != gamma else f"{gamma:g}"  # None, or NaN once in a DataFrame


def tta_frame(rows):
    """The TTA table of one model (:func:`kit.stages.tta_table`'s rows) as a DataFrame: top-1 by gamma
    (rows) and views x crops (columns)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["gamma"] = df["gamma"].map(gamma_label)
    return df.pivot_table(index="gamma", columns=["views", "crops"], values="top1")


def _df_html(rows, percent=("top1", "top1_val", "top1_test", "accuracy", "pseudo_accuracy")) -> str:
    import pandas as pd

    if not rows:
        return "<p><em>none</em></p>"
    df = pd.DataFrame(rows)
    for c in df.columns:
        if c in percent:
            df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}")
    return df.to_html(index=False, border=0, classes="table", na_rep="")


def _confusion_png(summary: dict, class_names: list[str]) -> str | None:
    if not summary.get("confusion"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kit import confusion

    cm = np.array(summary["confusion"]["matrix"])
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(cm), 0.6 + 0.5 * len(cm)))
    confusion.plot_confusion(cm, class_names, normalize="true", ax=ax)
    ax.set_title("ensemble, val (row-normalised)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _ensemble_html(ens: dict | None) -> str:
    if not ens:
        return "<p><em>not run</em></p>"
    weights = ", ".join(f"{m} {w:.3f}" for m, w in ens.get("weights", {}).items())
    fit = ens.get("fit") or {}
    how = (
        f"fitted on val ({fit.get('objective')}){', fell back to equal weights' if fit.get('fell_back_to_equal') else ''}"
        if fit.get("fitted") else "given"
    )
    rows = [
        {"model": r["model"], "weight": r.get("weight"), "accuracy": r.get("accuracy"), "nll": r.get("nll")}
        for r in ens.get("baselines", [])
    ]
    for r in rows:
        r["weight"] = "" if r["weight"] is None or r["weight"] != r["weight"] else f"{r['weight']:.3f}"
        r["nll"] = f"{r['nll']:.3f}" if r["nll"] is not None else ""
    return (
        f"<p>Models at stage <b>{html.escape(str(ens.get('stage')))}</b>; weights {html.escape(how)}: "
        f"{html.escape(weights)}. On val, each model alone, equal weights and the fitted ensemble:</p>"
        + _df_html(rows)
    )


def write(params: Params, layout: RunLayout, steps=()) -> dict:
    """Write ``summary.json`` and ``report.html`` for a run; return the summary."""
    from kit import data

    summary = collect(params, layout, steps)
    layout.summary.write_text(json.dumps(summary, indent=2, default=float))
    try:
        class_names = data.read_classes(params.data.root)
    except Exception:  # the report still renders without class names
        class_names = [str(i) for i in range(len(summary["confusion"]["matrix"]))] if summary["confusion"] else []
    png = _confusion_png(summary, class_names)
    links = "".join(
        f'<li><a href="notebooks/{html.escape(s.name)}.html">{html.escape(s.describe())}</a></li>'
        for s in steps
        if (layout.root / "notebooks" / f"{s.name}.html").exists()
    )
    params_yaml = layout.params.read_text() if layout.params.exists() else ""
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>nightkit run {html.escape(params.run)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table.table{{border-collapse:collapse;margin:.5em 0 1.5em}} .table td,.table th{{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:right}}
pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:85%}} h2{{margin-top:1.8em}}</style></head><body>
<h1>nightkit run <code>{html.escape(params.run)}</code></h1>
<p>Protocol: <b>{html.escape(summary['protocol'])}</b>{' (val clips are never adapted on nor pseudo-labelled)' if summary['protocol'] == 'clean' else ' (evaluation clips may join the pseudo-label pool, as in the challenge)'}.
Accuracies are top-1 % on the labelled dark lists: <b>val</b> (held out from adaptation; it also chooses
each model's best epoch and fits the ensemble weights) and <b>test</b> where its labels are known.</p>
<h2>Stages</h2><ol>{links}</ol>
<h2>Ablation</h2><pre>{html.escape(ablation_text(summary))}</pre>{_df_html(summary['ablation'])}
<h2>Test-time augmentation (after Adapt BN, val)</h2>{_df_html([{**t, "gamma": gamma_label(t["gamma"])} for t in summary['tta']])}
<h2>Pseudo labels per round</h2>{_df_html(summary['pseudo'])}
<h2>Ensemble</h2>{_ensemble_html(summary['ensemble'])}
<h2>Confusion matrix</h2>{f'<img alt="confusion matrix" src="data:image/png;base64,{png}">' if png else '<p><em>no ensemble predictions on val</em></p>'}
<p>Details, most-confused pairs and misclassified clips: the confusion stage's report above.</p>
<h2>Timings</h2>{_df_html(summary['timings'])}
<h2>Parameters</h2><pre>{html.escape(params_yaml)}</pre>
<h2>Environment</h2><pre>{html.escape(json.dumps(summary['environment'], indent=1))}</pre>
</body></html>"""
    layout.report.write_text(doc, encoding="utf-8")
    return summary
