"""Adaptive thresholds (issue 23) against plain NumPy: a streaming quantile of recent scores
and conformal p-values from a calibration window, for streaming and batch detectors alike."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load_dataset
from pynomaly import InvalidInputError, IsolationForest
from pynomaly.estimators.thresholds import Conformal, StreamingQuantile
from pynomaly.stream import HalfSpaceTrees


def reference_p_values(calibration, scores):
    calibration = np.asarray(calibration)
    return np.array([(1 + np.sum(calibration >= s)) / (len(calibration) + 1) for s in scores])


@pytest.mark.parametrize("window", [1, 7, 100, 1000])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_streaming_quantile_is_numpys_over_the_last_window(window, q):
    rng = np.random.default_rng(window)
    scores = rng.gamma(2.0, size=1500)
    t = StreamingQuantile(q=q, window=window)
    assert t.threshold == np.inf
    seen = 0
    for size in (1, 5, 300, 1, 1193):
        t.update(scores[seen:seen + size])
        seen += size
        recent = scores[max(0, seen - window):seen]
        assert t.threshold == np.quantile(recent, q, method="inverted_cdf")


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("window", [10, 99, 500])
def test_conformal_p_values_and_threshold_agree_with_numpy(alpha, window):
    rng = np.random.default_rng(0)
    stream = rng.normal(size=2000)
    c = Conformal(alpha=alpha, window=window)
    c.update(stream[:1500])
    calibration = stream[1500 - window:1500]
    new = np.concatenate([rng.normal(size=300), calibration[:20], [-10.0, 10.0]])
    p = c.p_value(new)
    np.testing.assert_allclose(p, reference_p_values(calibration, new), rtol=0, atol=0)
    # the one rule: score > threshold exactly when p <= alpha
    np.testing.assert_array_equal(c.predict(new) == 1, reference_p_values(calibration, new) <= alpha)


def test_conformal_flags_nothing_without_enough_calibration():
    c = Conformal(alpha=0.01, window=1000).update(np.arange(50.0))
    assert c.threshold == np.inf and not c.predict([1e9]).any()
    assert c.p_value([1e9])[0] == pytest.approx(1 / 51)


def test_conformal_on_a_batch_detector_and_a_stream():
    X, y = load_dataset("cardio")
    rng = np.random.default_rng(0)
    normal = rng.permutation(np.flatnonzero(y == 0))
    forest = IsolationForest(random_state=0).fit(X[normal[:800]])
    c = Conformal(alpha=0.05, window=500).update(forest.decision_function(X[normal[800:1300]]))
    rest = np.setdiff1d(np.arange(len(X)), normal[:1300])
    p = c.p_value(forest.decision_function(X[rest]))
    # held-out normal rows are flagged at about alpha; outliers far more often
    assert np.mean(p[y[rest] == 0] <= 0.05) < 0.12
    assert np.mean(p[y[rest] == 1] <= 0.05) > 0.3
    # the same object behind a streaming detector's scores
    hst = HalfSpaceTrees(seed=0, window_size=100)
    Xs = (X - X.min(0)) / np.where(X.max(0) > X.min(0), X.max(0) - X.min(0), 1)
    scores = hst.score_learn_many(Xs[normal[:600]])
    c2 = Conformal(alpha=0.05, window=300).update(scores[100:])
    assert c2.p_value(scores[-5:]).shape == (5,)


def test_bad_arguments_are_clear():
    for bad in (lambda: Conformal(alpha=0), lambda: Conformal(window=0), lambda: StreamingQuantile(q=1.5),
                lambda: Conformal().update([np.nan]), lambda: Conformal().p_value(["x"])):
        with pytest.raises(InvalidInputError):
            bad()
