"""Stage drivers: a stage launched under torchrun (2 CPU processes, gloo) from the same call a notebook makes."""

import json
import os

import pytest

from kit import predictions, stages, synth
from kit.config import load_params
from kit.data import read_list
from kit.layout import RunLayout

pytestmark = pytest.mark.slow


def test_supervised_stage_under_torchrun_writes_one_set_of_results(tmp_path, monkeypatch):
    root = synth.generate(tmp_path / "data", clips_per_class=2, frames=16, workers=1)
    params = load_params(
        "params/demo.yaml",
        [
            f"output_root={tmp_path / 'out'}",
            f"data.root={root}",
            "models=[{name: slowfast_tiny, key: sf, train: {epochs: 1, batch_size: 4, warmup_epochs: 0}}]",
            "nproc_per_node=2",
            "threads=1",
        ],
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = stages.run_stage("supervised", params, "sf")  # what 10_supervised.ipynb calls

    layout = RunLayout(params.out_dir)
    assert (layout.model_dir("sf", "supervised") / "final.pth").exists()
    val = read_list(root / "val.csv", None)
    assert results["val"]["n"] == len(val)  # the sampler's padding is not counted twice
    preds = predictions.load(layout.predictions("sf", "supervised", "val"), expect_paths=val.paths)
    assert len(preds) == len(val)
    history = json.loads((layout.model_dir("sf", "supervised") / "results.json").read_text())["history"]
    assert len(history) == 1
    assert os.environ.get("WORLD_SIZE") is None  # the launching process itself stays single
