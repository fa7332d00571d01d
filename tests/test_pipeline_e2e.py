"""The whole pipeline through papermill on a micro run: every notebook, the report, the rerun."""

import io
import json

import pytest

from kit import pipeline

pytestmark = pytest.mark.slow


def _micro(tmp_path):
    return [
        f"output_root={tmp_path / 'out'}",
        f"data.root={tmp_path / 'data'}",
        "data.synthetic_clips_per_class=3",
        "data.synthetic_frames=16",
        "models=[{name: uniformer_tiny, key: uniformer, train: {epochs: 1}}]",
        "pseudo.rounds=1",
        "pseudo.train.epochs=1",
        "eval.tta_views=[1]",
        "eval.tta_crops=[1, 3]",
    ]


def _warnings(notebook) -> list[str]:
    # what a cell printed to stderr that a reader would take for a warning
    cells = json.loads(notebook.read_text())["cells"]
    streams = ["".join(o["text"]) for c in cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    return [s for s in streams if "Warning" in s or "WARNING" in s]


def test_micro_pipeline_runs_every_notebook_and_reruns_nothing(tmp_path):
    overrides = _micro(tmp_path)
    out = io.StringIO()
    rc = pipeline.run("params/demo.yaml", overrides, progress=False, out=out)
    assert rc == 0, out.getvalue()
    run = tmp_path / "out" / "demo"

    summary = json.loads((run / "summary.json").read_text())
    stages = {(r["model"], r["stage"]) for r in summary["ablation"]}
    assert {("uniformer", "supervised"), ("uniformer", "adapt_bn"), ("uniformer", "pi1"), ("ensemble", "ensemble")} <= stages
    assert all(0.0 <= r["top1"] <= 1.0 for r in summary["ablation"])
    assert {(t["gamma"], t["crops"]) for t in summary["tta"]} == {(None, 1), (None, 3), (0.25, 1), (0.25, 3)}
    assert summary["pseudo"][0]["round"] == 1 and summary["pseudo"][0]["total_kept"] > 0
    assert summary["protocol"] == "clean"
    assert len(summary["timings"]) == len(pipeline.plan(pipeline.load_params("params/demo.yaml", overrides)))

    report = (run / "report.html").read_text()
    for name in ("00_data", "10_supervised_uniformer", "20_adapt_bn_uniformer", "30_pseudo_label_uniformer_r1",
                 "40_ensemble", "50_confusion"):
        assert (run / "notebooks" / f"{name}.ipynb").exists()
        html = run / "notebooks" / f"{name}.html"
        assert html.exists() and f'href="notebooks/{name}.html"' in report
        assert "kit.notebook.start" not in html.read_text()  # rendered without code cells
        assert "No description has been provided" not in html.read_text()  # every figure has its alt text
        assert not _warnings(run / "notebooks" / f"{name}.ipynb")
    assert "Ablation" in report and "data:image/png;base64" in report
    assert (run / "submission.csv").read_text().startswith("VideoID,Video,ClassID,Probability")
    assert (run / "pseudo" / "r1" / "pseudo.csv").exists()
    # round 1 continued from the Adapt BN model's weights (optimizer and schedule restart)
    pi1 = json.loads((run / "models" / "uniformer" / "pi1" / "results.json").read_text())
    assert pi1["init_from"].endswith("models/uniformer/adapt_bn/final.pth")

    markers = {p.name: p.stat().st_mtime_ns for p in (run / "notebooks").glob("*.done.json")}
    out = io.StringIO()
    assert pipeline.run("params/demo.yaml", overrides, progress=False, out=out) == 0
    assert "[1/" not in out.getvalue()  # nothing executed again
    assert "[done]" in out.getvalue() and "[todo]" not in out.getvalue()
    assert markers == {p.name: p.stat().st_mtime_ns for p in (run / "notebooks").glob("*.done.json")}

    # rerunning one stage executes only its notebook
    out = io.StringIO()
    assert pipeline.run("params/demo.yaml", overrides, only="ensemble", progress=False, out=out) == 0
    assert "[1/1] ensemble" in out.getvalue()

    # other parameters never overwrite this run: they go to a new folder
    out = io.StringIO()
    assert pipeline.run("params/demo.yaml", [*overrides, "seed=3"], dry_run=True, out=out) == 0
    assert "demo-2" in out.getvalue()


def test_failure_names_stage_notebook_and_resume_command(tmp_path):
    overrides = [*_micro(tmp_path), "data.val=missing.csv"]
    out = io.StringIO()
    rc = pipeline.run("params/demo.yaml", overrides, only="supervised", progress=False, out=out)
    text = out.getvalue()
    assert rc == 1
    assert "FAILED at supervised uniformer" in text
    assert "10_supervised_uniformer.ipynb" in text
    assert "resume" in text and "python -m kit.pipeline run params/demo.yaml" in text
