"""The papermill runner: planning, dry runs, bad parameters, run folders."""

import io
import re

import pytest
import yaml

from kit import pipeline
from kit.config import load_params, save_params


def test_plan_order_demo():
    params = load_params("params/demo.yaml")
    steps = pipeline.plan(params)
    names = [s.name for s in steps]
    assert names[0] == "00_data"
    assert names[1:3] == ["10_supervised_uniformer", "10_supervised_slowfast"]
    assert names[3:5] == ["20_adapt_bn_uniformer", "20_adapt_bn_slowfast"]
    assert names[5:7] == ["30_pseudo_label_uniformer_r1", "30_pseudo_label_slowfast_r1"]
    assert names[-2:] == ["40_ensemble", "50_confusion"]
    assert len(steps) == 1 + 2 + 2 + 2 * params.pseudo.rounds + 2


def test_dry_run_prints_plan_and_writes_nothing(tmp_path):
    out = io.StringIO()
    rc = pipeline.run("params/demo.yaml", [f"output_root={tmp_path}"], dry_run=True, out=out)
    text = out.getvalue()
    assert rc == 0
    assert "30_pseudo_label" in text and "round 4" in text and "dry run" in text
    assert not any(tmp_path.iterdir())


def test_bad_override_fails_before_any_stage(tmp_path, capsys):
    rc = pipeline.main(["run", "params/demo.yaml", "--set", f"output_root={tmp_path}", "--set", "train.epoch=3"])
    assert rc == 2
    assert "train.epoch" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_unknown_stage_name_is_refused():
    with pytest.raises(SystemExit):
        pipeline.main(["run", "params/demo.yaml", "--only", "sideways", "--dry-run"])


def test_run_folder_never_reuses_another_runs_folder(tmp_path):
    params = load_params("params/demo.yaml", [f"output_root={tmp_path}"])
    folder, _ = pipeline.run_folder(params)
    assert folder == tmp_path / "demo"
    save_params(params, folder / "params.yaml")
    assert pipeline.run_folder(params)[0] == folder  # same parameters: same folder (resume)
    other = load_params("params/demo.yaml", [f"output_root={tmp_path}", "train.epochs=2"])
    folder2, diff = pipeline.run_folder(other)
    assert folder2 == tmp_path / "demo-2"
    assert any(d.startswith("train.epochs") for d in diff)
    other.run = folder2.name
    save_params(other, folder2 / "params.yaml")
    assert pipeline.run_folder(load_params("params/demo.yaml", [f"output_root={tmp_path}", "train.epochs=2"]))[0] == folder2
    assert yaml.safe_load((folder / "params.yaml").read_text())["train"]["epochs"] == params.train.epochs


def test_rendered_figures_carry_the_heading_of_their_section(tmp_path, caplog):
    import base64
    import logging

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nbformat

    def figure_output():
        buf = io.BytesIO()
        fig = plt.figure(figsize=(1, 1))
        fig.savefig(buf, format="png")
        plt.close(fig)
        png = base64.b64encode(buf.getvalue()).decode()
        return nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 10 · Supervised fine-tuning\n\nIntro."),
        nbformat.v4.new_code_cell("fig", outputs=[figure_output()]),
        nbformat.v4.new_markdown_cell("\n## Confusion **matrices** of `val`\nText."),
        nbformat.v4.new_code_cell("a", outputs=[figure_output(), figure_output()]),
        nbformat.v4.new_code_cell("b", outputs=[figure_output()]),
    ]
    path = tmp_path / "stage.ipynb"
    nbformat.write(nb, path)
    with caplog.at_level(logging.WARNING):
        body = pipeline.render_html(path).read_text()
    alts = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', body)
    assert alts == [
        "Figure: 10 · Supervised fine-tuning",
        "Figure: Confusion matrices of val (1 of 3)",
        "Figure: Confusion matrices of val (2 of 3)",
        "Figure: Confusion matrices of val (3 of 3)",
    ]
    assert "No description" not in body and not [r for r in caplog.records if "Alternative text" in r.getMessage()]
    assert "text/html" not in nbformat.read(path, as_version=4).cells[1].outputs[0].data  # the notebook is left as it was


@pytest.mark.slow
def test_notebook_kernels_talk_over_private_unix_sockets(tmp_path, monkeypatch, capfd):
    import json
    import os

    import nbformat

    from kit.layout import RunLayout

    probe = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
    params_cell = nbformat.v4.new_code_cell("params_file = None\noverrides = []")
    params_cell.metadata["tags"] = ["parameters"]
    probe.cells = [params_cell, nbformat.v4.new_code_cell(
        "import os\nfrom ipykernel.kernelapp import IPKernelApp\napp = IPKernelApp.instance()\n"
        "folder = os.path.dirname(app.ip)\n"
        "print(app.transport, app.ip, oct(os.stat(folder).st_mode & 0o777) if folder else '-')"
    )]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(probe, tmp_path / "notebooks" / "00_data.ipynb")
    monkeypatch.setattr(pipeline, "NOTEBOOKS", tmp_path / "notebooks")
    root_before = set(os.listdir(pipeline.ROOT))

    layout = RunLayout(tmp_path / "run")
    pipeline.execute(pipeline.Step("data"), layout, kernel="python3", progress=False)

    cells = json.loads((layout.root / "notebooks" / "00_data.ipynb").read_text())["cells"]
    transport, ip, mode = "".join(cells[-1]["outputs"][0]["text"]).split()
    assert transport == "ipc" and mode == "0o700"
    assert os.path.basename(os.path.dirname(ip)).startswith("nightkit-kernel-")
    assert not os.path.exists(os.path.dirname(ip))  # the sockets' folder is gone with the kernel
    assert set(os.listdir(pipeline.ROOT)) == root_before  # no kernel-ipc-N sockets in the working directory
    assert "without encryption" not in capfd.readouterr().err


def test_a_resumed_run_keeps_its_start_and_each_step_names_the_code_that_ran_it(tmp_path, monkeypatch):
    import json

    from kit import config, report

    ran = []

    def execute(step, layout, **kw):  # what the runner sees of a notebook: its folder, and seconds
        (layout.root / "notebooks").mkdir(parents=True, exist_ok=True)
        ran.append(step.name)
        return 1.5

    monkeypatch.setattr(pipeline, "kernel_name", lambda: "python3")
    monkeypatch.setattr(pipeline, "execute", execute)
    monkeypatch.setattr(report, "write", lambda params, layout, steps: {})
    monkeypatch.setattr(report, "ablation_text", lambda summary: "")
    overrides = [f"output_root={tmp_path}", "pseudo.rounds=1"]
    run = tmp_path / "demo"

    def marker(name):
        return json.loads((run / "notebooks" / f"{name}.done.json").read_text())

    def at_commit(commit):  # the runner's and save_params' view of the checkout
        monkeypatch.setattr(pipeline, "git_commit", lambda: commit)
        monkeypatch.setattr(config, "git_commit", lambda cwd=None: commit)

    at_commit("aaaaaaa")
    assert pipeline.run("params/demo.yaml", overrides, only="data", out=io.StringIO()) == 0
    assert ran == ["00_data"] and marker("00_data")["git_commit"] == "aaaaaaa"

    at_commit("bbbbbbb-dirty")
    assert pipeline.run("params/demo.yaml", overrides, out=io.StringIO()) == 0  # resumes: 00_data is done
    assert ran[0] == "00_data" and "00_data" not in ran[1:] and ran[-1] == "50_confusion"
    assert yaml.safe_load((run / "params.yaml").read_text())["git_commit"] == "aaaaaaa"  # the run's start
    assert marker("00_data")["git_commit"] == "aaaaaaa"
    assert marker("50_confusion")["git_commit"] == "bbbbbbb-dirty"
    assert marker("50_confusion")["kit_version"] == pipeline.__version__
    layout = pipeline.RunLayout(run)
    params = load_params(run / "params.yaml", base=run / "params.yaml")
    monkeypatch.undo()  # the real report tables
    rows = report.collect(params, layout, pipeline.plan(params))["timings"]
    assert [(r["step"], r["git_commit"]) for r in rows[:2]] == [("00_data", "aaaaaaa"), ("10_supervised_uniformer", "bbbbbbb-dirty")]
