import json
import math

import numpy as np
import pytest

from kit import ensemble
from kit.ensemble import (
    apply_weights,
    ensemble_weights,
    fit_temperature,
    fit_temperatures,
    fit_weights,
    fuse,
)
from kit.predictions import Predictions, PredictionsMismatch

PATHS = ["a.mp4", "b.mp4"]


def preds(scores, kind, *, paths=PATHS, labels=None, model=None):
    scores = np.asarray(scores, dtype=np.float64)
    labels = [-1] * len(paths) if labels is None else labels
    return Predictions(
        paths=paths, labels=labels, scores=scores, kind=kind, meta={"model": model} if model else {}
    )


def softmax(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_prob_space_softmaxes_logits_once_and_probs_never():
    a = preds([[0.0, math.log(3.0)], [math.log(4.0), 0.0]], "logits")  # softmax: [.25,.75], [.8,.2]
    b = preds([[0.5, 0.5], [0.1, 0.9]], "probs")
    fused = fuse([a, b], [3, 1], space="prob")
    assert fused.kind == "probs"
    # 0.75 * softmax(a) + 0.25 * b
    np.testing.assert_allclose(fused.scores, [[0.3125, 0.6875], [0.625, 0.375]], atol=1e-6)
    assert fused.meta["weights"] == [0.75, 0.25]
    # a probability file alone comes back unchanged, not softmaxed again
    np.testing.assert_allclose(fuse([b]).scores, b.scores, atol=1e-7)
    assert not np.allclose(softmax(b.scores), b.scores)


def test_logit_space_weighted_sum_with_temperatures():
    a = preds([[1.0, 2.0], [0.0, 4.0]], "logits")
    c = preds([[3.0, 0.0], [2.0, 2.0]], "logits")
    fused = fuse([a, c], space="logit")
    assert fused.kind == "logits"
    np.testing.assert_allclose(fused.scores, [[2.0, 1.0], [1.0, 3.0]], atol=1e-6)
    scaled = fuse([a, c], [1, 1], space="logit", temperatures=[1.0, 2.0])
    np.testing.assert_allclose(scaled.scores, [[1.25, 1.0], [0.5, 2.5]], atol=1e-6)
    # prob space with temperatures: softmax(logits / T)
    fused_p = fuse([a, c], [1, 0], space="prob", temperatures=[2.0, 1.0])
    np.testing.assert_allclose(fused_p.scores, softmax(a.scores / 2.0), atol=1e-6)


def test_logit_space_refuses_probability_files():
    a = preds([[1.0, 2.0], [0.0, 4.0]], "logits")
    b = preds([[0.5, 0.5], [0.1, 0.9]], "probs", model="mvit")
    with pytest.raises(ValueError, match="logit-space fusion needs logits.*mvit.*probs"):
        fuse([a, b], space="logit")
    with pytest.raises(ValueError, match="temperature"):
        fuse([a, b], space="prob", temperatures=[1.0, 2.0])


def test_mismatched_files_are_refused_naming_the_first_difference(tmp_path):
    a = preds([[1.0, 2.0], [0.0, 4.0]], "logits")
    swapped = preds([[1.0, 2.0], [0.0, 4.0]], "logits", paths=["a.mp4", "c.mp4"])
    swapped.save(tmp_path / "swapped.npz")
    with pytest.raises(PredictionsMismatch, match=r"swapped.npz row 1 is 'c.mp4'.*'b.mp4'"):
        fuse([a, tmp_path / "swapped.npz"])
    shorter = preds([[1.0, 2.0]], "logits", paths=["a.mp4"])
    with pytest.raises(PredictionsMismatch, match="has 1 clips"):
        fuse([a, shorter])
    three = preds([[1.0, 2.0, 0.0], [0.0, 4.0, 0.0]], "logits")
    with pytest.raises(PredictionsMismatch, match="3 classes"):
        fuse([a, three])
    other_labels = preds([[1.0, 2.0], [0.0, 4.0]], "logits", labels=[0, 1])
    wrong_labels = preds([[1.0, 2.0], [0.0, 4.0]], "logits", labels=[1, 1])
    with pytest.raises(PredictionsMismatch, match="row 0"):
        fuse([other_labels, wrong_labels])


def test_weights_are_checked_and_files_load(tmp_path):
    a = preds([[1.0, 2.0], [0.0, 4.0]], "logits", labels=[1, -1])
    b = preds([[0.5, 0.5], [0.1, 0.9]], "probs", labels=[-1, 1])
    for bad, msg in [([1, -1], "non-negative"), ([0, 0], "all be zero"), ([1], "1 weights for 2")]:
        with pytest.raises(ValueError, match=msg):
            fuse([a, b], bad)
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    fused = fuse([tmp_path / "a.npz", tmp_path / "b.npz"])
    np.testing.assert_allclose(fused.scores, 0.5 * softmax(a.scores) + 0.5 * b.scores, atol=1e-6)
    assert fused.labels.tolist() == [1, 1]  # each file knows one label; they agree and merge
    assert fused.paths == PATHS


def synthetic_models(n=600, k=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    paths = [f"v{i}.mp4" for i in range(n)]
    good = rng.normal(0, 1, (n, k))
    good[np.arange(n), y] += 3.0  # clearly informative
    bad = rng.normal(0, 1, (n, k))  # noise
    bad[np.arange(n), y] += 0.3

    def mk(scores, name):
        return Predictions(
            paths=paths, labels=y, scores=scores, kind="logits", meta={"model": name}
        )

    return mk(good, "good"), mk(bad, "bad"), y


@pytest.mark.parametrize("objective", ["accuracy", "nll"])
def test_fit_weights_beats_or_equals_equal_weights(objective):
    good, bad, y = synthetic_models()
    fit = fit_weights([good, bad], objective=objective)
    assert fit.names == ["good", "bad"]
    assert all(w >= 0 for w in fit.weights) and sum(fit.weights) == pytest.approx(1.0)
    assert fit.weights[0] > fit.weights[1]
    assert fit.best_single[0] == "good"
    if objective == "accuracy":
        assert fit.score >= fit.equal_weight_score
        assert fit.score >= fit.per_model["good"] - 1e-12  # the grid contains the single models
    else:
        assert fit.score <= fit.equal_weight_score
        assert fit.score <= fit.per_model["good"] + 1e-6
    # the reported score is what the weights give
    fused = fuse([good, bad], fit.weights)
    acc = float((fused.scores.argmax(1) == y).mean())
    assert fit.accuracy["ensemble"] == pytest.approx(acc)
    frame = fit.to_frame()
    assert list(frame.index) == ["good", "bad", "equal", "ensemble"]
    json.dumps(fit.to_dict())


def test_fit_weights_falls_back_to_equal_when_fit_is_worse(monkeypatch):
    good, bad, _ = synthetic_models()
    monkeypatch.setattr(ensemble, "_fit_nll", lambda stack, y, space: np.array([0.0, 1.0]))
    fit = fit_weights([good, bad], objective="nll")
    assert fit.fell_back_to_equal
    assert fit.weights == [0.5, 0.5]
    assert fit.score == fit.equal_weight_score


def test_fit_weights_ignores_unlabelled_and_needs_labels():
    good, bad, y = synthetic_models(n=50)
    with pytest.raises(ValueError, match="labelled"):
        fit_weights([good, bad], labels=np.full(50, -1))
    y2 = y.copy()
    y2[:10] = -1
    fit = fit_weights([good, bad], labels=y2, objective="accuracy")
    assert 0 <= fit.score <= 1


def test_apply_weights_to_test_predictions():
    good, bad, _ = synthetic_models()
    fit = fit_weights([good, bad], objective="nll", space="logit")
    tg, tb, _ = synthetic_models(n=40, seed=1)
    fused = apply_weights(fit, [tg, tb])
    assert fused.kind == "logits"
    np.testing.assert_allclose(
        fused.scores, fit.weights[0] * tg.scores + fit.weights[1] * tb.scores, atol=1e-5
    )
    with pytest.raises(ValueError, match="fitted for 'good'"):
        apply_weights(fit, [tb, tg])


def test_fit_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    n, k = 4000, 5
    true_logits = rng.normal(0, 1.5, (n, k))
    p = softmax(true_logits)
    y = np.array([rng.choice(k, p=row) for row in p])
    over = Predictions(
        paths=[str(i) for i in range(n)], labels=y, scores=true_logits * 3.0, kind="logits"
    )
    t = fit_temperature(over)
    assert t == pytest.approx(3.0, rel=0.1)
    probs = Predictions(paths=["a"], labels=[0], scores=[[0.4, 0.6]], kind="probs")
    with pytest.raises(ValueError, match="needs logits"):
        fit_temperature(probs)
    assert fit_temperatures([probs]) == [1.0]


def test_ensemble_weights_from_config():
    from kit.config import EnsembleConfig

    good, bad, y = synthetic_models()
    given = ensemble_weights(
        EnsembleConfig(weights=[0.375, 0.625], objective="accuracy"), [good, bad]
    )
    assert given.weights == [0.375, 0.625] and not given.fitted and not given.fell_back_to_equal
    expected = (fuse([good, bad], [0.375, 0.625]).scores.argmax(1) == y).mean()
    assert given.score == pytest.approx(expected)
    equal = ensemble_weights(EnsembleConfig(weights="equal"), [good, bad])
    assert equal.weights == [0.5, 0.5] and equal.score == equal.equal_weight_score
    fitted = ensemble_weights(
        EnsembleConfig(weights="fit", objective="nll", temperature=True), [good, bad]
    )
    assert fitted.fitted and len(fitted.temperatures) == 2 and fitted.temperatures != [1.0, 1.0]
    assert fitted.score <= fitted.equal_weight_score


def test_class_bias_undoes_a_constructed_prior_shift():
    from kit.ensemble import apply_class_bias, fit_class_bias

    rng = np.random.default_rng(3)
    n, k = 3000, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 2.0
    shift = np.array([-1.5, 0.5, 0.5, 0.5])  # the model under-predicts class 0
    shifted = softmax(logits + shift)
    val = Predictions(paths=[str(i) for i in range(n)], labels=y, scores=shifted, kind="probs")
    bias = fit_class_bias(val)
    assert bias.mean() == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(bias, -(shift - shift.mean()), atol=0.25)
    fixed = apply_class_bias(val, bias)
    assert fixed.kind == "probs" and fixed.meta["class_bias"] == bias.tolist()
    assert (fixed.scores.argmax(1) == y).mean() > (shifted.argmax(1) == y).mean() + 0.02
    with pytest.raises(ValueError, match="3 entries for 4 classes"):
        apply_class_bias(val, [0.0, 0.0, 0.0])
