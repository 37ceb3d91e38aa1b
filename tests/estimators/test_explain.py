"""Explanations on every detector (issue 22): the ground truth (anomalies made by pushing one
known feature), exact neighbour shares of KNN and LOF per metric and method, the autoencoder's
reconstruction shares, the model-agnostic permutation estimate, the Explanation type, Dask,
and the requests that are refused."""

from __future__ import annotations

import numpy as np
import pytest

import pynomaly
from pynomaly import KNN, LOF, InvalidInputError, IsolationForest
from pynomaly.estimators.base import BaseDetector
from pynomaly.estimators.explain import Explanation, permutation_shapley

from conftest import load_dataset


@pytest.fixture(scope="module")
def ground_truth():
    """20k rows of 10 N(0, 1) features; row i < 200 has feature i % 10 pushed to +6 or -6
    (alternating every 10 rows): 10 anomalies per feature and side."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((20_000, 10))
    rows = np.arange(200)
    pushed = rows % 10
    X[rows, pushed] = np.where((rows // 10) % 2, 6.0, -6.0)
    return X, pushed


def _names_the_pushed_feature(model, X, pushed, method=None) -> float:
    e = model.explain(X[:200], method=method)
    return float(np.mean(e.top_indices(1)[:, 0] == pushed))


@pytest.mark.parametrize("method", ["tree_shap", "path"])
def test_ground_truth_forest(ground_truth, method):
    X, pushed = ground_truth
    model = IsolationForest(n_estimators=100, random_state=0).fit(X)
    assert _names_the_pushed_feature(model, X, pushed, method) >= 0.95


# k = 20 for both: the anomalies pushed to the same side of the same feature are 10 close rows,
# a cluster that a k-th-neighbour distance with k < 10 rightly does not call anomalous. KNN
# with method="mean" names the feature for 100% of the rows (euclidean and manhattan); the
# single k-th neighbour ("largest") for 88.5% (euclidean) / 94.5% (manhattan): one normal
# row in the tail of the pushed feature differs from x in nine other features too.
@pytest.mark.parametrize("cls,params", [(KNN, {"n_neighbors": 20, "method": "mean"}), (LOF, {"novelty": True})])
def test_ground_truth_neighbors(ground_truth, cls, params):
    X, pushed = ground_truth
    assert _names_the_pushed_feature(cls(**params).fit(X), X, pushed) >= 0.95


def test_ground_truth_autoencoder(ground_truth):
    pytest.importorskip("torch", reason="the autoencoder needs torch (pip install 'pynomaly[torch]')")
    from pynomaly.estimators.adapters.torch import TorchAutoEncoder

    X, pushed = ground_truth
    model = TorchAutoEncoder(hidden_neurons=(8, 4), epochs=4, batch_size=256, random_state=0, device="cpu").fit(X)
    assert _names_the_pushed_feature(model, X, pushed) >= 0.95


def test_ground_truth_model_agnostic_on_a_pyod_detector(ground_truth):
    pytest.importorskip("pyod", reason="the PyOD adapter needs pyod")
    from pynomaly.estimators.adapters.pyod import PyODDetector

    X, pushed = ground_truth
    model = PyODDetector("HBOS").fit(X)
    assert model._explain_methods == {"permutation": ("score",)}
    # Every other anomaly (100 rows, 10 per feature, both sides): the sampled estimate costs
    # 10 permutations x 11 steps x 32 background rows of HBOS per row.
    top = model.explain(X[:200:2]).top_indices(1)[:, 0]
    assert np.mean(top == pushed[::2]) >= 0.95
    back = type(model).from_bytes(model.to_bytes())  # the background travels with the model
    np.testing.assert_array_equal(back._background, model._background)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "manhattan"])
@pytest.mark.parametrize("how", ["largest", "mean", "median"])
def test_knn_shares_add_up_to_the_score(metric, how):
    X, _ = load_dataset("cardio")
    for k in (4, 5):  # even and odd k: the median is one neighbour or the mean of two
        model = KNN(n_neighbors=k, method=how, metric=metric).fit(X)
        e = model.explain(X[:300])
        assert (e.method, e.output) == ("neighbors", "score")
        np.testing.assert_array_equal(e.base_values, 0.0)
        assert (e.values >= 0).all()
        np.testing.assert_allclose(e.values.sum(1), model.decision_function(X[:300]), rtol=1e-12, atol=1e-12)


def test_knn_shares_are_each_features_own_differences():
    """By hand: x = (0, 1)'s neighbours are (0, 0) and (0, 2) at 1, then (1, 0) at sqrt(2),
    whose differences (-1, 1) are the 3rd neighbour's shares."""
    fit = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    x = np.array([[0.0, 1.0]])
    for metric, want in (("sqeuclidean", [1.0, 1.0]), ("manhattan", [1.0, 1.0]),
                         ("euclidean", [1.0 / np.sqrt(2), 1.0 / np.sqrt(2)])):
        e = KNN(n_neighbors=3, metric=metric, contamination=0.25).fit(fit).explain(x)
        np.testing.assert_allclose(e.values[0], want, rtol=1e-15)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "manhattan"])
def test_lof_shares_plus_base_are_the_lof(metric):
    X, _ = load_dataset("cardio")
    model = LOF(n_neighbors=15, metric=metric, novelty=True).fit(X[:1500])
    rows = X[1500:]
    e = model.explain(rows)
    assert (e.values >= 0).all() and (e.base_values >= 0).all()
    np.testing.assert_allclose(e.values.sum(1) + e.base_values, model.decision_function(rows), rtol=1e-12)


def test_neighbour_faithfulness_on_cardio():
    """The ablation check (see test_explain_forest.ablation_share) for KNN and LOF on cardio:
    0.81 and 0.87 measured. (Not everywhere: on satellite 0.63 / 0.65, annthyroid 0.58 / 0.51;
    the shares are exact for the row's neighbourhood, and moving a feature to the median moves
    the row to another one.)"""
    from test_explain_forest import ablation_share

    X, _ = load_dataset("cardio")
    knn = KNN().fit(X)
    assert ablation_share(knn, X, X[knn.labels_ == 1][:150], "neighbors") >= 0.8
    lof = LOF(novelty=True).fit(X)
    assert ablation_share(lof, X, X[lof.decision_function(X) > lof.threshold_][:150], "neighbors") >= 0.8


def test_cosine_and_outlier_mode_lof_are_refused_clearly():
    X, _ = load_dataset("cardio")
    for model in (KNN(metric="cosine").fit(X), LOF(metric="cosine", novelty=True).fit(X)):
        with pytest.raises(InvalidInputError, match="metric='cosine' is not one.*method='permutation'"):
            model.explain(X[:3])
        e = model.explain(X[:3], method="permutation")  # the model-agnostic one still works
        np.testing.assert_allclose(e.values.sum(1) + e.base_values, model.decision_function(X[:3]), rtol=1e-10)
    with pytest.raises(InvalidInputError, match="novelty=True"):
        LOF().fit(X).explain(X[:3])


def test_autoencoder_shares_are_its_error_terms():
    pytest.importorskip("torch", reason="the autoencoder needs torch")
    from pynomaly.estimators.adapters.torch import TorchAutoEncoder

    X, _ = load_dataset("cardio")
    model = TorchAutoEncoder(epochs=2, random_state=0, device="cpu").fit(X)
    e = model.explain(X)
    assert (e.method, e.output) == ("reconstruction", "score") and (e.values >= 0).all()
    np.testing.assert_allclose(e.values.sum(1), model.decision_function(X), rtol=1e-5)
    back = TorchAutoEncoder.from_bytes(model.to_bytes(), device="cpu")
    np.testing.assert_array_equal(back.explain(X[:10]).values, e.values[:10])


def _linear_score(X):
    return np.asarray(X) @ np.array([1.0, -2.0, 0.5])


def test_permutation_is_exact_on_an_additive_score():
    """For a linear score, interventional Shapley values are w_j (x_j - mean of background_j),
    and every permutation gives exactly them."""
    rng = np.random.default_rng(0)
    bg = rng.standard_normal((16, 3))
    X = rng.standard_normal((20, 3))
    values, base = permutation_shapley(_linear_score, X, bg)
    np.testing.assert_allclose(values, (X - bg.mean(0)) * [1.0, -2.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(values.sum(1) + base, _linear_score(X), atol=1e-12)


class _UsersDetector(BaseDetector):
    """A user's detector: an interacting score, no background kept unless _fit_input is used."""

    def fit(self, X, y=None):
        X = self._fit_input(X)
        self.n_features_in_ = X.shape[1]
        self.decision_scores_ = self.decision_function(X)
        self._process_decision_scores()
        return self

    def decision_function(self, X):
        X = np.asarray(X, dtype=np.float64)
        return np.abs(X[:, 0] * X[:, 1]) + X[:, 2] ** 2


def test_permutation_on_any_detector_is_additive_deterministic_and_row_wise():
    X, _ = load_dataset("cardio")
    X = X[:, :3]
    model = _UsersDetector().fit(X)
    assert model._background.shape == (32, 3)
    e = model.explain(X[:40])
    assert (e.method, e.output) == ("permutation", "score")
    np.testing.assert_allclose(e.values.sum(1) + e.base_values, model.decision_function(X[:40]), atol=1e-12)
    np.testing.assert_array_equal(model.explain(X[:40]).values, e.values)  # fixed seed
    np.testing.assert_array_equal(model.explain(X[20:40]).values, e.values[20:])  # rows independent
    own = model.explain(X[:5], background=X[100:110])
    np.testing.assert_allclose(own.base_values, model.decision_function(X[100:110]).mean())
    del model._background
    with pytest.raises(InvalidInputError, match="pass background="):
        model.explain(X[:5])


def test_explanation_top_and_names():
    pd = pytest.importorskip("pandas")
    X, _ = load_dataset("cardio")
    frame = pd.DataFrame(X, columns=[f"c{j}" for j in range(X.shape[1])])
    model = IsolationForest(n_estimators=20, random_state=0).fit(frame)
    e = model.explain(frame.iloc[:4])
    assert isinstance(e, pynomaly.Explanation) and pynomaly.Explanation is Explanation
    assert e.feature_names == list(frame.columns) and len(e) == 4
    top = e.top(3)
    for r, row in enumerate(top):
        assert [a for _, _, a in row] == sorted(e.values[r], reverse=True)[:3]
        for name, value, attribution in row:
            j = int(name[1:])
            assert value == X[r, j] and attribution == e.values[r, j]
    shap_like = model.explain(frame.iloc[:4], output="path_length")  # smaller = more anomalous
    np.testing.assert_array_equal(shap_like.top_indices(3), e.top_indices(3))


def test_dask_explain_equals_in_process():
    pytest.importorskip("dask", reason="pynomaly.dask needs dask")
    import dask
    import dask.array as da

    import pynomaly.dask as pdask

    X, _ = load_dataset("cardio")
    for model, method in ((IsolationForest(n_estimators=30, random_state=0).fit(X), "tree_shap"),
                          (IsolationForest(n_estimators=30, random_state=0).fit(X), "path"),
                          (KNN(method="mean").fit(X), None), (_UsersDetector().fit(X[:, :3]), None)):
        data = X if model.n_features_in_ == X.shape[1] else X[:, :3]
        with dask.config.set(scheduler="threads"):
            e = pdask.explain(model, da.from_array(data[:500], chunks=(130, -1)), method=method)
            values, base = dask.compute(e.values, e.base_values)
        want = model.explain(data[:500], method=method)
        assert (e.method, e.output) == (want.method, want.output)
        np.testing.assert_array_equal(values, want.values)
        np.testing.assert_array_equal(base, want.base_values)
    with pytest.raises(InvalidInputError, match="cannot explain with method 'nope'"):
        pdask.explain(KNN().fit(X), da.from_array(X), method="nope")


def test_jax_models_keep_their_background_in_their_own_format():
    pytest.importorskip("jax", reason="the JAX adapter needs jax")
    from pynomaly.estimators.adapters.jax import JaxDeepSVDD

    X, _ = load_dataset("cardio")
    model = JaxDeepSVDD(epochs=1, random_state=0).fit(X)
    assert model._explain_methods == {"permutation": ("score",)} and model._background.shape == (32, 21)
    back = JaxDeepSVDD.from_bytes(model.to_bytes())
    np.testing.assert_array_equal(back._background, model._background)
    e = back.explain(X[:3])
    np.testing.assert_allclose(e.values.sum(1) + e.base_values, back.decision_function(X[:3]), rtol=1e-4, atol=1e-6)


def test_neighbour_explanations_are_chunked_by_memory():
    X, _ = load_dataset("cardio")
    model = KNN(n_neighbors=100, method="mean").fit(X)
    assert model._explain_rows_per_chunk("neighbors", 21) == 2_000_000 // 2100  # (rows, 100, 21) shares
    model._explain_chunk = 7  # many chunks: the same values as one
    chunked = model.explain(X[:50]).values
    del model._explain_chunk
    np.testing.assert_array_equal(chunked, model.explain(X[:50]).values)
