"""pynomaly.combine against pyod.models.combination on PyOD's standardizer, on real score columns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import pynomaly
from pynomaly.estimators import combine
from pynomaly._errors import InvalidInputError, NotFittedError

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    base = Path(os.environ["PYNOMALY_DATASETS"]) if os.environ.get("PYNOMALY_DATASETS") else REPO.parent / "shared" / "datasets"
    path = base / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"dataset {name} not found in {base} (set PYNOMALY_DATASETS)")
    d = np.load(path)
    return d["X"], d["y"]


def _pyod():
    comb = pytest.importorskip("pyod.models.combination", reason="PyOD's combination needs `combo`")
    util = pytest.importorskip("pyod.utils.utility")
    return comb, util.standardizer


_COLUMNS: dict = {}


def _score_columns(name: str, k: int = 10):
    """Raw scores of k different detectors (forests of different sizes, seeds and subsamples)."""
    if (name, k) not in _COLUMNS:
        X, _ = _load(name)
        cols = []
        for i in range(k):
            m = pynomaly.IsolationForest(n_estimators=10 + 5 * i, max_samples=64 * (1 + i % 4), random_state=i).fit(X)
            cols.append(m.decision_scores_ * (1 + i))  # different scales, as different detectors have
        _COLUMNS[(name, k)] = (np.column_stack(cols), X)
    return _COLUMNS[(name, k)]


DATASETS = ["cardio", "thyroid", "satellite", "pendigits"]


@pytest.mark.parametrize("name", DATASETS)
def test_standardize_matches_pyod_standardizer(name):
    _, standardizer = _pyod()
    S, _ = _score_columns(name)
    np.testing.assert_allclose(combine.standardize(S), standardizer(S), rtol=0, atol=1e-12)
    half = len(S) // 2
    Z, Zt = combine.standardize(S[:half], S[half:])
    Zr, Ztr = standardizer(S[:half], S[half:])
    np.testing.assert_allclose(Z, Zr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Zt, Ztr, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", DATASETS)
def test_average_maximization_median_match_pyod(name):
    comb, standardizer = _pyod()
    S, _ = _score_columns(name)
    Z = standardizer(S)
    np.testing.assert_allclose(combine.average(S), comb.average(Z), rtol=0, atol=1e-12)
    w = np.random.default_rng(0).uniform(0.1, 2, size=(1, S.shape[1]))
    np.testing.assert_allclose(combine.average(S, w), comb.average(Z, w), rtol=0, atol=1e-12)
    np.testing.assert_allclose(combine.average(S, w.ravel()), comb.average(Z, w), rtol=0, atol=1e-12)
    np.testing.assert_allclose(combine.maximization(S), comb.maximization(Z), rtol=0, atol=1e-12)
    np.testing.assert_allclose(combine.median(S), comb.median(Z), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("mode", ["aom", "moa"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_buckets=5, random_state=0),
        dict(n_buckets=2, random_state=7),
        dict(n_buckets=5, bootstrap_estimators=True, random_state=3),
        dict(n_buckets=3, method="dynamic", random_state=11),
        dict(n_buckets=5, random_state="RandomState(5)"),  # built fresh per call below
    ],
)
def test_aom_moa_match_pyod(name, mode, kwargs):
    comb, standardizer = _pyod()
    S, _ = _score_columns(name)
    Z = standardizer(S)
    def fresh():
        if kwargs.get("random_state") == "RandomState(5)":
            return dict(kwargs, random_state=np.random.RandomState(5))
        return kwargs

    ours = getattr(combine, mode)(S, **fresh())
    theirs = getattr(comb, mode)(Z, **fresh())
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


def test_constant_column_standardizes_to_zero():
    _, standardizer = _pyod()
    S = np.column_stack([np.full(100, 3.0), np.linspace(0, 1, 100)])
    np.testing.assert_allclose(combine.standardize(S), standardizer(S), rtol=0, atol=1e-12)
    assert np.all(combine.standardize(S)[:, 0] == 0.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: combine.average(np.arange(5.0)), "2-dimensional"),
        (lambda: combine.average(np.empty((0, 3))), "at least one row"),
        (lambda: combine.average([["a", "b"]]), "numeric"),
        (lambda: combine.maximization(np.array([[1.0, np.nan], [2.0, 3.0]])), "row 0, column 1"),
        (lambda: combine.average(np.ones((4, 3)), weights=[1.0, 2.0]), "weights must have shape"),
        (lambda: combine.aom(np.random.rand(10, 6), n_buckets=4), "equal buckets"),
        (lambda: combine.aom(np.random.rand(10, 6), n_buckets=1), r"\[2, 6\]"),
        (lambda: combine.moa(np.random.rand(10, 6), n_buckets=7), r"\[2, 6\]"),
        (lambda: combine.moa(np.random.rand(10, 6), n_buckets=2, method="random"), "'static' or 'dynamic'"),
        (lambda: combine.aom(np.random.rand(10, 4), n_buckets=2, method="dynamic"), "at least 5"),
        (lambda: combine.aom(np.random.rand(10, 6), n_buckets=2, random_state="x"), "random_state"),
        (lambda: combine.standardize(np.ones((3, 2)), np.ones((3, 3))), "columns"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(InvalidInputError, match=match):
        call()


# -- the Ensemble detector -----------------------------------------------------------------------
def _members(k=4):
    return [pynomaly.IsolationForest(n_estimators=20 + 10 * i, random_state=i) for i in range(k)]


@pytest.mark.parametrize("method", ["average", "maximization", "median", "aom", "moa"])
def test_ensemble_combines_member_scores_as_pyod(method):
    comb, standardizer = _pyod()
    X, _ = _load("cardio")
    half = len(X) // 2
    e = combine.Ensemble(_members(), method=method, n_buckets=2, random_state=0).fit(X[:half])
    S = np.column_stack([d.decision_scores_ for d in e.detectors_])
    T = np.column_stack([d.decision_function(X[half:]) for d in e.detectors_])
    Z, Zt = standardizer(S, T)
    if method in ("aom", "moa"):
        ref_train = getattr(comb, method)(Z, n_buckets=2, random_state=0)
        ref_test = getattr(comb, method)(Zt, n_buckets=2, random_state=0)
    else:
        ref_train, ref_test = getattr(comb, method)(Z), getattr(comb, method)(Zt)
    np.testing.assert_allclose(e.decision_scores_, ref_train, rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.decision_function(X[half:]), ref_test, rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.decision_function(X[:half]), e.decision_scores_, rtol=0, atol=1e-12)
    assert e.threshold_ == np.percentile(e.decision_scores_, 90.0)
    probs = e.predict_proba(X[half:], method="unify")
    assert probs.shape == (len(X) - half, 2)
    e.contamination = 0.2  # decisions follow, without refitting
    assert e.threshold_ == np.percentile(e.decision_scores_, 80.0)


def test_ensemble_weights_members_and_detects_anomalies():
    from sklearn.metrics import roc_auc_score

    X, y = _load("cardio")
    e = combine.Ensemble(_members(3), weights=[1.0, 2.0, 3.0]).fit(X)
    assert roc_auc_score(y, e.decision_scores_) > 0.8
    assert e.mean_.shape == (3,) and e.scale_.shape == (3,)


def test_ensemble_members_are_copies_and_clone_works():
    sklearn_base = pytest.importorskip("sklearn.base")
    X, _ = _load("glass")
    members = _members(2)
    e = combine.Ensemble(members).fit(X)
    assert all(not hasattr(m, "threshold_") for m in members)
    c = sklearn_base.clone(e)
    assert c.get_params()["method"] == "average" and not hasattr(c, "detectors_")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(detectors=[]), "at least one detector"),
        (dict(detectors=None), "at least one detector"),
        (dict(detectors=["iforest"]), "pynomaly detector"),
        (dict(detectors=_members(2), method="vote"), "method must be one of"),
        (dict(detectors=_members(3), method="aom", n_buckets=2), "equal buckets"),
    ],
)
def test_ensemble_bad_parameters(kwargs, match):
    X, _ = _load("glass")
    with pytest.raises(InvalidInputError, match=match):
        combine.Ensemble(**kwargs).fit(X)


def test_ensemble_not_fitted():
    X, _ = _load("glass")
    with pytest.raises(NotFittedError):
        combine.Ensemble(_members(2)).decision_function(X)
