"""kit.confusion on constructed labels, and the 50_confusion notebook on a fixture run."""

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from fixture_run import CLASSES, LABELS, PREDICTED, build_fixture_run  # noqa: E402

from kit import confusion  # noqa: E402
from kit.config import load_params  # noqa: E402
from kit.predictions import Predictions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# 3 classes; clip labels and predictions written out so every count below can be checked by eye
LAB = [0, 0, 0, 0, 1, 1, 1, 2, 2, -1, -1]
PRED = [0, 0, 1, 2, 1, 1, 0, 2, 1, 0, 2]
# true 0: 2 right, 1 -> class 1, 1 -> class 2; true 1: 2 right, 1 -> 0; true 2: 1 right, 1 -> 1
EXPECTED = np.array([[2, 1, 1], [1, 2, 0], [0, 1, 1]])


def _preds(labels, predicted, k, *, margin=3.0):
    logits = np.zeros((len(labels), k), dtype=np.float32)
    logits[np.arange(len(labels)), predicted] = margin + np.arange(len(labels)) * 0.1
    return Predictions([f"c{i}.mp4" for i in range(len(labels))], labels, logits)


def test_confusion_matrix_counts_and_excludes_unlabelled():
    cm = confusion.confusion_matrix(LAB, PRED, 3)
    np.testing.assert_array_equal(cm, EXPECTED)
    assert cm.sum() == 9 and confusion.unlabelled_count(LAB) == 2
    np.testing.assert_array_equal(confusion.confusion_of(_preds(LAB, PRED, 3)), EXPECTED)


def test_confusion_matrix_rejects_bad_ids():
    with pytest.raises(ValueError, match="labels outside"):
        confusion.confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ValueError, match="predicted classes outside"):
        confusion.confusion_matrix([0, 1], [0, 5], 3)
    with pytest.raises(ValueError, match="differ in length"):
        confusion.confusion_matrix([0, 1], [0], 3)


def test_normalize_rows_columns_and_empty_rows():
    cm = np.array([[2, 2, 0], [0, 0, 0], [1, 0, 3]])
    rows = confusion.normalize(cm, "true")
    np.testing.assert_allclose(rows, [[0.5, 0.5, 0], [0, 0, 0], [0.25, 0, 0.75]])
    cols = confusion.normalize(cm, "pred")
    np.testing.assert_allclose(cols.sum(axis=0), [1, 1, 1])
    np.testing.assert_allclose(cols[:, 0], [2 / 3, 0, 1 / 3])
    np.testing.assert_array_equal(confusion.normalize(cm, None), cm)
    with pytest.raises(ValueError, match="normalize"):
        confusion.normalize(cm, "rows")


def test_per_class_report_matches_hand_computation():
    table = confusion.per_class_report(EXPECTED, ["a", "b", "c"])
    # class a: tp 2, predicted 3, support 4; class c: tp 1, predicted 2, support 2
    assert table.loc["a", "precision"] == pytest.approx(2 / 3)
    assert table.loc["a", "recall"] == pytest.approx(0.5)
    assert table.loc["a", "f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert table.loc["c", "precision"] == pytest.approx(0.5) and table.loc["c", "recall"] == pytest.approx(0.5)
    assert table["support"].tolist() == [4, 3, 2, 9]
    assert table.loc["mean (macro)", "recall"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    with pytest.raises(ValueError, match="class names"):
        confusion.per_class_report(EXPECTED, ["a", "b"])


def test_most_confused_orders_off_diagonal_pairs():
    cm = np.array([[5, 3, 0], [1, 4, 0], [0, 3, 2]])
    table = confusion.most_confused(cm, ["x", "y", "z"], top=3)
    assert list(zip(table["true"], table["predicted"], table["count"], strict=True)) == [
        ("x", "y", 3), ("z", "y", 3), ("y", "x", 1)]
    assert table["share"].tolist() == pytest.approx([3 / 8, 3 / 5, 1 / 5])
    assert len(confusion.most_confused(np.eye(3, dtype=int), top=5)) == 0


def test_compare_marks_improved_and_worse_cells():
    before = np.array([[1, 3], [0, 4]])
    after = np.array([[3, 1], [1, 3]])
    diff, table = confusion.compare(before, after, ["p", "q"], names=("adapt_bn", "pi4"))
    np.testing.assert_allclose(diff, [[0.5, -0.5], [0.25, -0.25]])
    got = {(r.true, r.predicted): r.improved for r in table.itertuples()}
    assert got == {("p", "p"): True, ("p", "q"): True, ("q", "p"): False, ("q", "q"): False}
    assert list(table.columns[3:5]) == ["adapt_bn", "pi4"]
    assert table["change"].abs().is_monotonic_decreasing
    with pytest.raises(ValueError, match="shapes"):
        confusion.compare(before, np.eye(3))


def test_misclassified_lists_the_cell_most_confident_first():
    preds = _preds(LAB, PRED, 3)
    table = confusion.misclassified(preds, (0, 1), ["a", "b", "c"])
    assert table["path"].tolist() == ["c2.mp4"]
    both = confusion.misclassified(_preds([0, 0, 0], [1, 1, 0], 2), (0, 1))
    assert both["path"].tolist() == ["c1.mp4", "c0.mp4"]  # c1 has the larger logit margin
    assert (both["p_predicted"] > both["p_true"]).all()
    by_pair = confusion.misclassified_by_pair(preds, ["a", "b", "c"], top=10)
    assert sorted(by_pair["path"]) == ["c2.mp4", "c3.mp4", "c6.mp4", "c8.mp4"]  # every off-diagonal clip


@pytest.mark.parametrize("k", [11, 50])
def test_plot_confusion_is_readable_for_11_and_50_classes(k):
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, 400)
    preds = np.where(rng.random(400) < 0.7, labels, rng.integers(0, k, 400))
    cm = confusion.confusion_matrix(labels, preds, k)
    names = [f"class{i}" for i in range(k)]
    ax = confusion.plot_confusion(cm, names, normalize="true")
    annotations = [t for t in ax.texts if t.get_text()]
    assert len(annotations) == (k * k if k <= 20 else 0)
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    ax2 = confusion.plot_compare(cm, np.diag(np.diag(cm)) + 0, names)
    assert [t.get_text() for t in ax2.get_yticklabels()] == names
    plt.close("all")


def test_load_run_lists_missing_stages_and_falls_back_for_compare(tmp_path):
    fx = build_fixture_run(tmp_path, with_videos=False)
    params = load_params(fx.params_file, base=fx.params_file)
    run = confusion.load_run(params, split="val")
    assert run.class_names == CLASSES
    assert set(run.sources) == set(PREDICTED)
    assert ("uni", "supervised") in run.missing and ("sf", "pi1") in run.missing
    assert run.final() == [("ensemble", "ensemble"), ("uni", "pi2"), ("sf", "pi2")]
    assert run.pick_compare(["adapt_bn", "pi4"]) == ("adapt_bn", "pi2")
    assert run.pick_compare(["adapt_bn", "pi2"]) == ("adapt_bn", "pi2")
    assert run.pick_compare(["pi2", "pi4"]) == ("adapt_bn", "pi2")  # never a stage against itself
    assert run.pick_compare(["pi2", "adapt_bn"]) == ("pi2", "adapt_bn")  # as asked when both exist
    assert run.comparisons(["adapt_bn", "pi4"]) == [("uni", "adapt_bn", "pi2"), ("sf", "adapt_bn", "pi2")]
    del run.sources["uni", "pi2"], run.sources["sf", "pi2"]
    assert run.pick_compare(["adapt_bn", "pi4"]) is None and run.comparisons(["adapt_bn", "pi4"]) == []
    summary = run.summary()
    assert summary[summary.status == "missing"].shape[0] == 4
    ok = summary[(summary.model == "uni") & (summary.stage == "adapt_bn")].iloc[0]
    labelled = [y for y in LABELS if y >= 0]
    right = sum(p == y for p, y in zip(PREDICTED["uni", "adapt_bn"], LABELS, strict=True) if y >= 0)
    assert ok.top1 == pytest.approx(right / len(labelled)) and ok["unlabelled (excluded)"] == 1


def test_load_run_without_a_val_list_says_so(tmp_path):
    fx = build_fixture_run(tmp_path, with_videos=False)
    params = load_params(fx.params_file, ["data.val=null"], base=fx.params_file)
    with pytest.raises(ValueError, match="params.data.val is null"):
        confusion.load_run(params, split="val")


def test_load_run_rejects_class_count_mismatch(tmp_path):
    fx = build_fixture_run(tmp_path, with_videos=False)
    (fx.data_root / "classes.txt").write_text("a\nb\n")
    params = load_params(fx.params_file, base=fx.params_file)
    with pytest.raises(ValueError, match="classes.txt lists 2"):
        confusion.load_run(params, split="val")


def test_notebook_is_stored_clean_with_a_parameters_cell():
    nb = json.loads((ROOT / "notebooks" / "50_confusion.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert "params = kit.notebook.start(params_file, overrides)" in "".join(code[1]["source"])
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert not any(line.lstrip().startswith(("def ", "class ")) for c in code for line in "".join(c["source"]).splitlines())


@pytest.mark.slow
def test_notebook_runs_under_papermill_on_a_fixture_run(tmp_path):
    import papermill as pm

    fx = build_fixture_run(tmp_path)
    out = tmp_path / "50_confusion.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "50_confusion.ipynb"), str(out), cwd=str(ROOT), kernel_name="python3",
        parameters={"params_file": str(fx.params_file), "compare": ["adapt_bn", "pi2"]}, progress_bar=False,
    )
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    text = "\n".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/html", "")) for o in outputs
    )
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert "missing" in text and "supervised" in text  # the summary says what the run lacks
    # ensemble confuses clip00 (Run -> Walk) and clip03 (Sit -> Stand): the report table lists both
    assert "val/clip00.mp4" in text and "val/clip03.mp4" in text
    assert text.count("<img src='data:image/png;base64,") == 2  # their frame strips, inline for the HTML report
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3 + 2  # ensemble + 2 models, then one comparison per model
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


@pytest.mark.slow
def test_notebook_runs_on_a_run_that_stopped_after_adapt_bn(tmp_path):
    import papermill as pm

    from kit.layout import RunLayout

    fx = build_fixture_run(tmp_path)
    layout = RunLayout(fx.out_dir)
    for model, stage in [("uni", "pi2"), ("sf", "pi2"), ("ensemble", "ensemble")]:
        layout.predictions(model, stage, "val").unlink()
    out = tmp_path / "50_confusion.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "50_confusion.ipynb"), str(out), cwd=str(ROOT), kernel_name="python3",
        parameters={"params_file": str(fx.params_file)}, progress_bar=False,
    )
    outputs = [o for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    text = "\n".join("".join(o.get("text", "")) for o in outputs)
    assert "nothing to compare" in text and "ensemble@ensemble" in text  # says what is missing
    assert "per-class report of uni@adapt_bn" in text  # the first model leads without an ensemble
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 2  # one figure per model
