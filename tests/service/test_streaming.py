"""Streaming detectors stored and run like any other (issue 23): trained through the registry,
loaded from their snapshot bytes, run record by record with conformal p-values and flags."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load_dataset
from pynomaly import InvalidInputError, service
from pynomaly.estimators.thresholds import Conformal
from pynomaly.stream import HalfSpaceTrees, OnlineIsolationForest


def scaled(n=1500):
    X, y = load_dataset("cardio")
    X, y = X[:n], y[:n]
    lo, hi = X.min(0), X.max(0)
    return (X - lo) / np.where(hi > lo, hi - lo, 1.0), y


@pytest.mark.parametrize("cls", [HalfSpaceTrees, OnlineIsolationForest])
def test_trained_stored_and_loaded_as_the_same_detector(tmp_path, cls):
    X, _ = scaled()
    params = {"seed": 3, "window_size": 100}
    det = service.train(tmp_path, "s", X[:1000], cls.__name__, params)
    assert det.algorithm == cls.__name__ and det.n_features == X.shape[1]
    _, stored = service.load_model(tmp_path, "s")
    direct = cls(**params).fit(X[:1000])
    assert stored.threshold_ == direct.threshold_ and stored.to_bytes() == direct.to_bytes()
    np.testing.assert_array_equal(service.detect(tmp_path, "s", X[1000:], save=False).scores,
                                  direct.decision_function(X[1000:]))


def test_stream_is_prequential_with_conformal_p_values(tmp_path):
    X, y = scaled()
    service.train(tmp_path, "hst", X[:500], "HalfSpaceTrees", {"seed": 1, "window_size": 100})
    _, model = service.load_model(tmp_path, "hst")
    expected = model.score_learn_many(X[500:])
    run = service.stream(tmp_path, "hst", X[500:], learn=True, alpha=0.05, calibration=200, chunk=77)
    np.testing.assert_array_equal(run.scores, expected)
    # each p-value against the 200 scores before it, as plain NumPy computes it
    ref = [(1 + np.sum(expected[max(0, i - 200):i] >= s)) / (min(i, 200) + 1) for i, s in enumerate(expected)]
    np.testing.assert_allclose(run.p_values, ref, rtol=0, atol=0)
    np.testing.assert_array_equal(run.flags, run.p_values <= 0.05)
    assert run.flags.any() and not run.flags.all()
    # without learning, the stored state scores every record
    still = service.stream(tmp_path, "hst", X[500:], chunk=1000)
    _, fresh = service.load_model(tmp_path, "hst")
    np.testing.assert_array_equal(still.scores, fresh.score_many(X[500:]))


def test_stream_refuses_batch_detectors_and_wrong_widths(tmp_path):
    X, _ = scaled(300)
    service.train(tmp_path, "forest", X, "IsolationForest")
    with pytest.raises(InvalidInputError, match="not a streaming detector"):
        service.stream(tmp_path, "forest", X)
    service.train(tmp_path, "oif", X, "OnlineIsolationForest", {"seed": 0})
    with pytest.raises(InvalidInputError, match="features"):
        service.stream(tmp_path, "oif", X[:, :5])
    with pytest.raises(InvalidInputError):
        Conformal(alpha=2.0)
