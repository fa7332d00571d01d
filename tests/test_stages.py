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


def test_evaluation_workers_change_no_result_of_the_adapt_bn_stage(tmp_path):
    import torch

    runs = {}
    for workers in (0, 2):
        params = load_params("params/demo.yaml", [
            f"output_root={tmp_path / f'out{workers}'}", f"data.root={tmp_path / 'data'}", "data.num_workers=1",
            "data.synthetic_clips_per_class=2", "data.synthetic_frames=16",
            f"data.eval_num_workers={workers}", "models=[{name: slowfast_tiny, key: sf}]", "adapt_bn.batch_size=4",
            "eval.tta_crops=[3]", "eval.batch_size=2",
        ])
        stages.ensure_data(params)  # generated once, then found
        # the loaders that only evaluate take eval_num_workers, the train loader num_workers
        assert stages._loader(params, "val", train=False, gamma=None).num_workers == workers
        assert stages._loader(params, "labeled", train=True, gamma=None).num_workers == 1
        layout = RunLayout(params.out_dir)
        torch.manual_seed(0)
        stages.save_weights(stages.build_model(params, "sf"), layout.model_dir("sf", "supervised") / "final.pth")
        results = stages.adapt(params, "sf")  # Adapt BN on the pool, then val, test, the pool and the TTA table
        assert results["adapt_bn"]["batches"] > 1
        weights = torch.load(layout.model_dir("sf", "adapt_bn") / "final.pth", weights_only=True)["model"]
        preds = {s: predictions.load(layout.predictions("sf", "adapt_bn", s)) for s in ("val", "test", "unlabeled")}
        runs[workers] = results, weights, preds
    (r0, w0, p0), (r2, w2, p2) = runs[0], runs[2]
    assert r0["val"] == r2["val"] and r0["tta"] == r2["tta"]
    assert w0.keys() == w2.keys() and all(torch.equal(w0[k], w2[k]) for k in w0)
    for split in p0:
        assert p0[split].paths == p2[split].paths and (p0[split].scores == p2[split].scores).all()


@pytest.mark.parametrize("name", ["uniformer_tiny", "slowfast_tiny"])
def test_channels_last_models_keep_their_layout_and_compute_what_contiguous_ones_do(tmp_path, name):
    import torch

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classes.txt").write_text("".join(f"class{i}\n" for i in range(8)))  # all a model needs

    def params(channels_last):
        return load_params("params/demo.yaml", [
            f"output_root={tmp_path}", f"data.root={tmp_path / 'data'}", f"channels_last={str(channels_last).lower()}",
            f"models=[{{name: {name}, key: m}}]",
        ])

    torch.manual_seed(0)
    plain = stages.build_model(params(False), "m")
    path = stages.save_weights(plain, tmp_path / "plain.pth")
    last = stages.build_model(params(True), "m")
    stages.load_weights(last, path)  # a contiguous checkpoint into a channels-last model
    five_d = [(n, p) for n, p in last.named_parameters() if p.dim() == 5]
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for _, p in five_d)
    assert sum(not p.is_contiguous() for _, p in five_d) >= 3  # 1x1x1 kernels are both layouts at once
    assert all(torch.equal(p, plain.get_parameter(n)) for n, p in last.named_parameters())
    # and a channels-last checkpoint into a contiguous model
    again = stages.build_model(params(False), "m")
    stages.load_weights(again, stages.save_weights(last, tmp_path / "last.pth"))
    assert all(p.is_contiguous() and torch.equal(p, last.get_parameter(n)) for n, p in again.named_parameters())

    x = torch.randn(2, 3, 8, 48, 48)
    y = torch.tensor([1, 2])
    for model in (plain, last):
        model.train()
        torch.manual_seed(1)  # the same drop path
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for n, p in plain.named_parameters():
        assert torch.allclose(last.get_parameter(n).grad, p.grad, rtol=1e-3, atol=1e-5), n
    plain.eval(), last.eval()
    with torch.no_grad():
        assert torch.allclose(last(x), plain(x), rtol=1e-4, atol=1e-5)
