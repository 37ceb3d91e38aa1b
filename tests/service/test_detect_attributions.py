"""Attributions in the one result type (issue 22, faces): DetectionResult carries a request's
explanation (checked), and Scorer.detect fills it from the detector's own ``explain``."""

from __future__ import annotations

import numpy as np
import pytest

import pynomaly
from pynomaly import DetectorNotReadyError, InvalidInputError
from pynomaly.domain import DetectionResult, InvalidTransitionError
from pynomaly.estimators.explain import Explanation
from pynomaly.service import Scorer, top_features
from pynomaly.store.datasets import load_cardio


@pytest.fixture(scope="module")
def data():
    return load_cardio()[0]


@pytest.fixture(scope="module")
def forest(data):
    return pynomaly.IsolationForest(n_estimators=50, contamination=0.1, random_state=0).fit(data)


@pytest.mark.parametrize("method", [None, "tree_shap", "path"])
def test_detect_fills_the_detectors_own_attributions(forest, data, method):
    X = data[:40]
    r = Scorer.of(forest, "f").detect(X, want=("scores", "labels", "attributions"), explain_method=method)
    e = forest.explain(X, method=method)
    np.testing.assert_array_equal(r.attributions, e.values)
    assert (r.explain_method, r.explain_output) == (e.method, e.output)
    np.testing.assert_array_equal(r.scores, forest.decision_function(X))


@pytest.mark.parametrize("method", [None, "tree_shap", "path", "permutation"])
@pytest.mark.parametrize("rows", [1, 5, 40])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_serving_entry_explains_as_the_library(forest, data, method, rows, dtype):
    """Scorer.explain takes the forest's cheap entry for rows in hand (the kernel called on the
    cached explainer, no second validation): the library's Explanation, bit for bit."""
    X = data[100:100 + rows].astype(dtype)
    if method == "permutation":  # not a native method: the library's own explain, with its error
        with pytest.raises(InvalidInputError, match="background"):
            Scorer.of(forest, "f").explain(X, method)
        return
    got, want = Scorer.of(forest, "f").explain(X, method), forest.explain(X, method=method)
    np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(got.base_values, want.base_values)
    np.testing.assert_array_equal(got.data, want.data)
    assert (got.method, got.output, got.feature_names) == (want.method, want.output, want.feature_names)


def test_knn_attributions(data):
    knn = pynomaly.KNN(n_neighbors=5).fit(data[:500])
    X = data[500:520]
    r = Scorer.of(knn, "k").detect(X, want=("attributions",))
    np.testing.assert_array_equal(r.attributions, knn.explain(X).values)
    assert r.explain_method == "neighbors"


def test_only_requests_that_ask_get_attributions(forest, data):
    r = Scorer.of(forest, "f").detect(data[:3])
    assert r.attributions is None and r.explain_method is None and r.explain_output is None


def test_bad_requests_are_refused_clearly(forest, data):
    s = Scorer.of(forest, "f")
    with pytest.raises(InvalidInputError, match="cannot explain with method 'nope'.*'tree_shap', 'path'"):
        s.detect(data[:2], want=("attributions",), explain_method="nope")
    with pytest.raises(InvalidInputError, match="add 'attributions' to want"):
        s.detect(data[:2], explain_method="path")
    with pytest.raises(InvalidInputError, match="explain_method must be a method name"):
        s.explain(data[:2], 3)
    with pytest.raises(InvalidInputError, match="21"):
        s.explain(data[:2, :5])


class _NoExplain:
    """A user's scorer-compatible model without ``explain``."""

    threshold_ = 0.0
    n_features_in_ = 2

    def decision_function(self, X):
        return np.asarray(X, dtype=np.float64).sum(axis=1)


def test_a_model_that_cannot_explain_says_so():
    s = Scorer.of(_NoExplain(), "u")
    with pytest.raises(DetectorNotReadyError, match="cannot explain"):
        s.detect(np.ones((2, 2)), want=("attributions",))


def _explanation(values, method="path", output="log2_score"):
    values = np.asarray(values, dtype=np.float64)
    return Explanation(values, np.zeros(len(values)), ["a", "b"][: values.shape[-1]], output, method, values)


def test_result_checks_the_explanation():
    scores = np.array([0.1, 0.9])
    with pytest.raises(InvalidTransitionError, match=r"shape \(2, n_features\).*\(3, 2\)"):
        DetectionResult("d", 1, 0.5, scores, [0, 1], explanation=_explanation(np.zeros((3, 2))))
    with pytest.raises(InvalidTransitionError, match="method and output"):
        DetectionResult("d", 1, 0.5, scores, [0, 1], explanation=_explanation(np.zeros((2, 2)), method=None))
    decided = DetectionResult.decided("d", 1, 0.5, scores, scores > 0.5)
    with pytest.raises(InvalidTransitionError, match="shape"):
        decided.explained(_explanation(np.zeros(2)))
    e = _explanation([[1, 2], [3, 4]])
    r = decided.explained(e)
    assert r.explanation is e and r.attributions.tolist() == [[1, 2], [3, 4]]
    assert r.scores is scores and r.flags.tolist() == [False, True] and r.explain_output == "log2_score"
    assert decided.attributions is None and decided.explanation is None  # the batch's result is left as it was


def test_top_features_of_chosen_rows(forest, data):
    e = forest.explain(data[:6])
    assert top_features(e, 2, rows=[4, 1]) == [top_features(e, 2)[4], top_features(e, 2)[1]]
    with pytest.raises(InvalidInputError, match="from 1 to 21"):
        top_features(e, 22, rows=[])
