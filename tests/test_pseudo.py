import csv
import json
import logging
import math

import numpy as np
import pytest

from kit.config import ThresholdConfig
from kit.data import read_list
from kit.predictions import Predictions
from kit.pseudo import (
    build_pool,
    known_labels,
    precision_thresholds,
    read_hidden_labels,
    select,
    select_round,
    selection_report,
    thresholds_for,
    write_pseudo_list,
)

# the reference's hand-set round-1 thresholds, one per class (11 classes)
REFERENCE_R1 = [0.32, 0.5, 0.44, 0.6, 0.5, 0.74, 0.45, 0.5, 0.55, 0.6, 0.5]


def probs_pred(probs, labels=None, paths=None):
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    paths = paths or [f"pool/{i}.mp4" for i in range(n)]
    labels = [-1] * n if labels is None else labels
    return Predictions(paths=paths, labels=labels, scores=probs, kind="probs")


def one_hotish(classes, confs, k):
    """Rows whose top class is ``classes[i]`` with probability ``confs[i]``, the rest spread evenly."""
    out = np.empty((len(classes), k))
    for i, (c, p) in enumerate(zip(classes, confs, strict=True)):
        out[i] = (1 - p) / (k - 1)
        out[i, c] = p
    return out


def test_select_keeps_clips_reaching_their_class_threshold():
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    mask, labels = select(probs, [0.6, 0.6, 0.5])
    assert labels.tolist() == [0, 1, 2, 0]
    assert mask.tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="2 thresholds for 3 classes"):
        select(probs, [0.5, 0.5])


def test_fixed_number_per_class_list_and_per_round():
    pool = one_hotish(list(range(11)) * 2, [0.4] * 11 + [0.8] * 11, 11)
    thr = thresholds_for(ThresholdConfig(strategy="fixed", value=0.5), 1, pool)
    assert thr.tolist() == [0.5] * 11
    cfg = ThresholdConfig(strategy="fixed", per_round=[REFERENCE_R1, 0.9])
    np.testing.assert_array_equal(thresholds_for(cfg, 1, pool), REFERENCE_R1)
    mask, _ = select(pool, thresholds_for(cfg, 1, pool))
    assert mask[:11].tolist() == [
        0.4 >= t for t in REFERENCE_R1
    ]  # only class 0 (0.32) passes at 0.4
    assert mask[:11].sum() == 1 and mask[11:].all()
    assert thresholds_for(cfg, 2, pool).tolist() == [0.9] * 11
    with pytest.raises(ValueError, match="no value for round 3"):
        thresholds_for(cfg, 3, pool)
    with pytest.raises(ValueError, match="2 per-class thresholds for 11 classes"):
        thresholds_for(ThresholdConfig(strategy="fixed", value=[0.1, 0.2]), 1, pool)
    with pytest.raises(ValueError, match="needs `value` or `per_round`"):
        thresholds_for(ThresholdConfig(strategy="fixed"), 1, pool)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        thresholds_for(ThresholdConfig(strategy="fixed", value=1.5), 1, pool)


def test_none_keeps_everything():
    pool = one_hotish([0, 1, 2], [0.34, 0.4, 0.99], 3)
    thr = thresholds_for(ThresholdConfig(strategy="none"), 4, pool)
    assert select(pool, thr)[0].all()


def test_quantile_keeps_top_fraction_per_predicted_class():
    # class 0: 10 clips, class 1: 4 clips, class 2: none predicted
    confs0 = np.linspace(0.5, 0.95, 10)
    confs1 = [0.4, 0.9, 0.6, 0.7]
    pool = one_hotish([0] * 10 + [1] * 4, [*confs0, *confs1], 3)
    cfg = ThresholdConfig(strategy="quantile", per_round=[0.5, 0.7, 0.9, 1.0])
    thr = thresholds_for(cfg, 1, pool)
    mask, labels = select(pool, thr)
    assert mask[:10].sum() == 5 and mask[10:].sum() == 2  # ceil(0.5 * n) per class
    assert set(np.flatnonzero(mask[:10])) == {5, 6, 7, 8, 9}  # the most confident ones
    assert set(np.flatnonzero(mask[10:])) == {1, 3}
    assert math.isinf(thr[2])
    assert select(pool, thresholds_for(cfg, 2, pool))[0][:10].sum() == 7
    assert select(pool, thresholds_for(cfg, 4, pool))[0].all()
    with pytest.raises(ValueError, match="one fraction"):
        thresholds_for(ThresholdConfig(strategy="quantile", value=[0.5, 0.5]), 1, pool)


def make_val(rng, n_per_class=200, k=3):
    """Val where confidence predicts correctness; class 2's predictions are mostly wrong."""
    classes, confs, truth = [], [], []
    for c in range(k):
        conf = rng.uniform(0.35, 1.0, n_per_class)
        p_correct = 0.2 if c == 2 else conf  # higher confidence, more often right
        right = rng.uniform(size=n_per_class) < p_correct
        classes += [c] * n_per_class
        confs += conf.tolist()
        truth += [c if r else (c + 1) % k for r in right]
    return probs_pred(
        one_hotish(classes, confs, k),
        labels=truth,
        paths=[f"val/{i}.mp4" for i in range(len(truth))],
    )


def test_precision_strategy_meets_target_on_val(caplog):
    rng = np.random.default_rng(0)
    val = make_val(rng)
    pool = probs_pred(one_hotish([0, 1, 2], [0.9, 0.9, 0.9], 3))
    cfg = ThresholdConfig(strategy="precision", target_precision=0.9, min_count=5)
    with caplog.at_level(logging.WARNING, logger="kit.pseudo"):
        thr = thresholds_for(cfg, 1, pool, val=val)
    assert "classes [2] never reach precision 0.90" in caplog.text
    assert math.isinf(thr[2])
    probs, truth = val.probs(), val.labels
    mask, labels = select(probs, thr)
    for c in (0, 1):
        kept = mask & (labels == c)
        assert kept.sum() >= 5
        assert (truth[kept] == c).mean() >= 0.9
        # the lowest such threshold: the next lower candidate misses the target or the count
        lower = np.sort(probs.max(1)[(labels == c) & (probs.max(1) < thr[c])])
        if lower.size:
            more = (labels == c) & (probs.max(1) >= lower[-1])
            assert (truth[more] == c).mean() < 0.9
    assert not (mask & (labels == 2)).any()
    thr2, reached = precision_thresholds(val, target=0.9, min_count=5)
    np.testing.assert_array_equal(thr, thr2)
    assert reached[0] >= 0.9 and np.isnan(reached[2])
    with pytest.raises(ValueError, match="labelled val"):
        thresholds_for(cfg, 1, pool)
    with pytest.raises(ValueError, match="no labels"):
        thresholds_for(cfg, 1, pool, val=probs_pred(one_hotish([0], [0.9], 3)))


def test_selection_report_counts_and_accuracy():
    probs = one_hotish([0, 0, 0, 1, 1, 2], [0.9, 0.8, 0.4, 0.95, 0.7, 0.6], 3)
    truth = [0, 1, 0, 1, -1, 2]  # clip 4's label is unknown
    pool = probs_pred(probs)
    val = probs_pred(
        one_hotish([0, 0, 1], [0.9, 0.9, 0.3], 3), labels=[0, 2, 1], paths=["v0", "v1", "v2"]
    )
    report = selection_report(
        pool, [0.5, 0.5, 0.5], true_labels=truth, label_source="hidden", val=val,
        class_names=["Drink", "Jump", "Pick"], round=1, protocol="clean", strategy="fixed",
    )  # fmt: skip
    assert report.pool.tolist() == [3, 2, 1]
    assert report.kept.tolist() == [2, 2, 1]
    assert report.labelled.tolist() == [2, 1, 1]
    assert report.correct.tolist() == [1, 1, 1]
    np.testing.assert_allclose(report.accuracy, [0.5, 1.0, 1.0])
    assert report.total_accuracy == pytest.approx(3 / 4)
    assert report.val_kept.tolist() == [2, 0, 0] and report.val_correct.tolist() == [1, 0, 0]
    frame = report.to_frame()
    assert list(frame.index) == ["Drink", "Jump", "Pick", "all"]
    assert frame.loc["all", "kept"] == 5
    assert frame.loc["Drink", "pool_accuracy"] == pytest.approx(2 / 3)
    assert frame.loc["Drink", "val_accuracy"] == pytest.approx(0.5)
    d = report.to_dict()
    assert d["protocol"] == "clean" and d["label_source"] == "hidden"
    json.dumps(d)  # JSON-ready
    inf_report = selection_report(pool, [math.inf, 0.5, 0.5])
    assert inf_report.to_dict()["threshold"][0] is None and inf_report.kept[0] == 0
    assert inf_report.label_source is None  # pool labels all -1: no accuracy claimed
    assert np.isnan(inf_report.accuracy).all()


def test_pseudo_list_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(11), size=5)
    paths = [f"dark/clip {i}.mp4" for i in range(5)]
    labels = probs.argmax(1)
    out = write_pseudo_list(tmp_path / "r1" / "pseudo.csv", paths, labels, probs)
    text = out.read_text()
    assert "tensor" not in text and "[" not in text
    rows = list(csv.reader(text.splitlines()))
    assert [r[0] for r in rows] == paths
    assert [int(r[1]) for r in rows] == labels.tolist()
    np.testing.assert_allclose([[float(x) for x in r[2:]] for r in rows], probs, atol=1e-6)
    assert all(len(r) == 13 for r in rows)
    with pytest.raises(ValueError, match="comma"):
        write_pseudo_list(tmp_path / "bad.csv", ["a,b.mp4"], [0], probs[:1])
    with pytest.raises(ValueError, match="labels must lie in 0..10"):
        write_pseudo_list(tmp_path / "bad.csv", paths[:1], [11], probs[:1])
    with pytest.raises(ValueError, match="do not match"):
        write_pseudo_list(tmp_path / "bad.csv", paths, labels[:2], probs)


def test_pseudo_list_reads_back_through_the_data_layer(tmp_path):
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(11), size=4)
    paths = [f"dark/{i}.mp4" for i in range(4)]
    out = write_pseudo_list(tmp_path / "pseudo.csv", paths, probs.argmax(1), probs)
    back = read_list(out, num_classes=11)
    assert back.paths == paths
    assert back.labels.tolist() == probs.argmax(1).tolist()
    np.testing.assert_allclose(back.probs, probs, atol=1e-6)
    pool = build_pool(back, protocol="clean")  # lists from the data layer build pools too
    assert pool.paths == paths and pool.as_list().paths == paths


def test_hidden_labels_and_known_labels(tmp_path):
    assert read_hidden_labels(tmp_path) is None
    (tmp_path / "hidden_labels.csv").write_text("pool/0.mp4,2\npool/1.mp4,0\n")
    hidden = read_hidden_labels(tmp_path)
    assert hidden == {"pool/0.mp4": 2, "pool/1.mp4": 0}
    pool = probs_pred(one_hotish([2, 1, 0], [0.9, 0.9, 0.9], 3), labels=[-1, -1, 0])
    labels, source = known_labels(pool, hidden=hidden, protocol="transductive")
    assert labels.tolist() == [2, 0, 0]
    assert "hidden_labels.csv" in source and "transductive" in source
    (tmp_path / "hidden_labels.csv").write_text("pool/0.mp4,two\n")
    with pytest.raises(ValueError, match=":1: label 'two'"):
        read_hidden_labels(tmp_path)


def test_build_pool_protocols():
    unlabeled = [
        ("dark/u0.mp4", -1),
        ("dark/u1.mp4", -1),
        ("dark/v0.mp4", -1),
    ]  # v0 leaked into the pool
    val = [("dark/v0.mp4", 3), ("dark/v1.mp4", 4)]
    test = [("dark/t0.mp4", -1)]
    clean = build_pool(unlabeled, val=val, test=test, protocol="clean")
    assert clean.protocol == "clean"
    assert clean.paths == ["dark/u0.mp4", "dark/u1.mp4"]  # val never enters the pool
    assert clean.dropped["evaluation"] == 1
    trans = build_pool(unlabeled, val=val, test=test, protocol="transductive")
    assert trans.paths == [
        "dark/u0.mp4",
        "dark/u1.mp4",
        "dark/v0.mp4",
        "dark/v1.mp4",
        "dark/t0.mp4",
    ]
    assert trans.counts() == {"unlabeled": 3, "val": 1, "test": 1}
    assert trans.dropped["duplicate"] == 1
    assert "transductive protocol: 5 pool clips" in trans.describe()
    with pytest.raises(ValueError, match="protocol"):
        build_pool(unlabeled, protocol="open")


def test_select_round_writes_list_and_report(tmp_path):
    pool = probs_pred(one_hotish([0, 0, 1, 1], [0.9, 0.5, 0.8, 0.6], 2), labels=[0, 1, 1, -1])
    cfg = ThresholdConfig(strategy="quantile", value=0.5)
    report, mask = select_round(
        cfg, 1, pool, out_dir=tmp_path, class_names=["Drink", "Jump"], protocol="clean"
    )
    assert mask.tolist() == [True, False, True, False]
    rows = list(csv.reader((tmp_path / "pseudo.csv").read_text().splitlines()))
    assert [(r[0], r[1]) for r in rows] == [("pool/0.mp4", "0"), ("pool/2.mp4", "1")]
    saved = json.loads((tmp_path / "selection.json").read_text())
    assert (
        saved["kept"] == [1, 1]
        and saved["strategy"] == "quantile"
        and saved["accuracy"] == [1.0, 1.0]
    )
    assert (tmp_path / "selection.csv").read_text().startswith("class,threshold")
    assert report.total_kept == 2
