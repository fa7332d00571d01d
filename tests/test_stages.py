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


def _fake_previous_stage(params, rng):
    # every model's adapt_bn predictions on the three lists, as the Adapt BN stage writes them
    import numpy as np

    layout = RunLayout(params.out_dir)
    lists = {
        "unlabeled": [f"u{i}.mp4" for i in range(12)],
        "val": [f"v{i}.mp4" for i in range(6)],
        "test": [f"t{i}.mp4" for i in range(6)],
    }
    labels = {s: rng.integers(0, 3, len(p)) if s == "val" else np.full(len(p), -1) for s, p in lists.items()}
    for m in params.models:
        for split, paths in lists.items():
            predictions.Predictions(paths, labels[split], rng.normal(size=(len(paths), 3)), kind="logits").save(
                layout.predictions(m.label, "adapt_bn", split)
            )
    return lists


@pytest.mark.parametrize("protocol", ["clean", "transductive"])
def test_select_pseudo_pool_follows_the_protocol(tmp_path, protocol):
    import numpy as np

    root = tmp_path / "data"
    root.mkdir()
    (root / "classes.txt").write_text("a\nb\nc\n")
    params = load_params(
        "params/demo.yaml",
        [
            f"output_root={tmp_path / 'out'}", f"data.root={root}", "data.synthetic=false",
            "models=[{name: uniformer_tiny, key: u}, {name: slowfast_tiny, key: s}]", f"protocol={protocol}",
            "pseudo.threshold.strategy=none",
        ],
    )
    lists = _fake_previous_stage(params, np.random.default_rng(0))
    report = stages.select_pseudo(params, 1)
    kept = read_list(RunLayout(params.out_dir).pseudo_dir(1) / "pseudo.csv", 3).paths
    if protocol == "clean":
        assert sorted(kept) == sorted(lists["unlabeled"])  # val and test never join the pool
    else:
        assert sorted(kept) == sorted(lists["unlabeled"] + lists["val"] + lists["test"])
    assert report["protocol"] == protocol
    assert stages.select_pseudo(params, 1) == report  # computed once per round, then read back
