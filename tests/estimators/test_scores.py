"""pynomaly.scores and the decision API of BaseDetector against NumPy, SciPy and PyOD.

The oracles are the reference implementations themselves (np.percentile, np.mean/np.std,
scipy.special.erf, scikit-learn's MinMaxScaler, PyOD's BaseDetector methods) run on scores of
real datasets; every SIMD target this CPU supports is exercised.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import pynomaly
from pynomaly import _core
from pynomaly.estimators import scores as S
from pynomaly._errors import InvalidInputError, NotFittedError

REPO = Path(__file__).resolve().parents[2]
TARGETS = list(pynomaly.build_info()["simd_supported"])
CONTAMINATIONS = [0.01, 0.05, 0.1, 0.123, 0.2, 0.5]


def _datasets_dir() -> Path:
    env = os.environ.get("PYNOMALY_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def _load(name: str):
    path = _datasets_dir() / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"dataset {name} not found in {path.parent} (set PYNOMALY_DATASETS)")
    d = np.load(path)
    return d["X"], d["y"]


_SCORE_CACHE: dict = {}


def _real_scores(name: str):
    """(training scores, scores of held-out rows, fitted forest) from an isolation forest on `name`."""
    if name not in _SCORE_CACHE:
        X, _ = _load(name)
        rng = np.random.default_rng(0)
        idx = rng.permutation(len(X))
        cut = int(0.7 * len(X))
        model = pynomaly.IsolationForest(n_estimators=50, random_state=0).fit(X[idx[:cut]])
        _SCORE_CACHE[name] = (model.decision_scores_, model.decision_function(X[idx[cut:]]), model, X[idx[cut:]])
    return _SCORE_CACHE[name]


SMALL = ["glass", "cardio", "thyroid", "satellite", "mammography"]


@pytest.fixture(params=TARGETS)
def simd(request):
    before = pynomaly.build_info()["simd"]
    _core.set_simd(request.param)
    yield request.param
    _core.set_simd(before)


# -- thresholds: bit-equal to np.percentile ------------------------------------------------------
@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_threshold_equals_numpy_percentile_on_real_scores(name, n_jobs, simd):
    train, test, _, _ = _real_scores(name)
    for c in CONTAMINATIONS:
        assert S.threshold(train, c, n_jobs=n_jobs) == np.percentile(train, 100 * (1 - c))
    for q in [0, 0.5, 1, 12.5, 33.3, 50, 66.7, 90, 99, 99.99, 100]:
        assert S.percentile(test, q, n_jobs=n_jobs) == np.percentile(test, q)


def test_threshold_on_large_real_scores_uses_selection_path(simd):
    # http: 567k rows with many duplicate rows, hence many tied scores; above 524288 scores the
    # selection brackets the ranks with a sample (the path the benchmark measures).
    X, _ = _load("http")
    scores = pynomaly.IsolationForest(n_estimators=20, random_state=1).fit(X).decision_scores_
    assert scores.size > 524288
    for n_jobs in (1, 2):
        for c in [0.001, 0.0039, 0.1, 0.5]:
            assert S.threshold(scores, c, n_jobs=n_jobs) == np.percentile(scores, 100 * (1 - c))
        for q in [0.0, 0.01, 50.0, 99.999, 100.0]:
            assert S.percentile(scores, q, n_jobs=n_jobs) == np.percentile(scores, q)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: np.sort(rng.normal(size=600_000)),  # sorted input (sample order != value order)
        lambda rng: np.sort(rng.normal(size=600_000))[::-1].copy(),
        lambda rng: rng.integers(0, 3, size=600_000).astype(float),  # three values, massive ties
        lambda rng: np.full(600_000, 0.25),
        lambda rng: np.r_[np.full(599_990, 1.0), rng.normal(size=10)],
        lambda rng: rng.standard_cauchy(size=700_001),  # heavy tails
    ],
)
def test_percentile_adversarial_inputs(make, simd):
    x = make(np.random.default_rng(5))
    for q in [0.0, 0.1, 10.0, 50.0, 89.9, 90.0, 99.5, 100.0]:
        assert S.percentile(x, q, n_jobs=2) == np.percentile(x, q)


def test_percentile_small_arrays_and_infinities():
    rng = np.random.default_rng(3)
    for n in range(1, 40):
        x = rng.normal(size=n)
        for q in np.linspace(0, 100, 41):
            assert S.percentile(x, q) == np.percentile(x, q)
    x = np.array([-np.inf, 1.0, 2.0, np.inf])
    with np.errstate(invalid="ignore"):
        for q in [0.0, 10.0, 50.0, 90.0, 100.0]:
            np.testing.assert_array_equal(S.percentile(x, q), np.percentile(x, q))


def test_threshold_independent_of_threads_and_target():
    train, _, _, _ = _real_scores("satellite")
    big = np.concatenate([train] * 100)  # > 524288: the sampled path
    before = pynomaly.build_info()["simd"]
    try:
        results = set()
        for t in TARGETS:
            _core.set_simd(t)
            for j in (1, 2):
                results.add(S.threshold(big, 0.1, n_jobs=j))
    finally:
        _core.set_simd(before)
    assert results == {np.percentile(big, 90.0)}


# -- moments -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SMALL)
def test_describe_matches_numpy(name, simd):
    train, _, _, _ = _real_scores(name)
    st = S.describe(train, n_jobs=2)
    assert st.n == train.size
    assert st.mean == pytest.approx(np.mean(train), rel=1e-12, abs=0)
    assert st.std == pytest.approx(np.std(train), rel=1e-12, abs=0)
    assert st.min == train.min() and st.max == train.max()


def test_describe_is_stable_where_naive_formula_fails():
    # Large offset, tiny spread: E[x^2] - E[x]^2 loses every digit here.
    x = 1e9 + np.random.default_rng(0).normal(size=200_000) * 1e-3
    st = S.describe(x)
    assert st.std == pytest.approx(np.std(x), rel=1e-9)
    assert st.mean == pytest.approx(np.mean(x), rel=1e-15)


def test_describe_bit_identical_across_threads_and_targets():
    x = np.random.default_rng(1).lognormal(size=1_000_003)
    before = pynomaly.build_info()["simd"]
    try:
        seen = set()
        for t in TARGETS:
            _core.set_simd(t)
            for j in (1, 2):
                seen.add(S.describe(x, n_jobs=j))
    finally:
        _core.set_simd(before)
    assert len(seen) == 1


# -- transforms ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SMALL)
def test_linear_bit_equal_to_minmaxscaler_clip(name, simd):
    from sklearn.preprocessing import MinMaxScaler

    train, test, _, _ = _real_scores(name)
    ref = MinMaxScaler().fit(train.reshape(-1, 1)).transform(test.reshape(-1, 1)).ravel().clip(0, 1)
    np.testing.assert_array_equal(S.linear(test, train, n_jobs=2), ref)
    wide = np.concatenate([test, [train.min() - 1, train.max() + 1]])  # clipping at both ends
    out = S.linear(wide, train)
    assert out[-2] == 0.0 and out[-1] == 1.0


@pytest.mark.parametrize("name", SMALL)
def test_unify_matches_scipy_erf(name, simd):
    from scipy.special import erf

    train, test, _, _ = _real_scores(name)
    mu, sigma = np.mean(train), np.std(train)
    ref = erf((test - mu) / (sigma * np.sqrt(2))).clip(0, 1)
    np.testing.assert_allclose(S.unify(test, train, n_jobs=2), ref, rtol=0, atol=1e-12)


def test_unify_erf_accuracy_over_whole_range(simd):
    from scipy.special import erf

    z = np.linspace(-2, 9, 2_000_001)
    got = S.unify(z, S.ScoreStats(n=2, mean=0.0, std=1 / np.sqrt(2), min=0.0, max=0.0))
    # mean 0, std 1/sqrt(2): the argument of erf is z itself (up to an ulp)
    np.testing.assert_allclose(got, erf(z).clip(0, 1), rtol=0, atol=2e-15)
    assert np.all((got >= 0) & (got <= 1))


@pytest.mark.parametrize("name", SMALL)
def test_zscore_matches_numpy(name, simd):
    train, test, _, _ = _real_scores(name)
    np.testing.assert_allclose(S.zscore(test, train), (test - train.mean()) / train.std(), rtol=1e-12, atol=1e-12)


def test_transforms_bit_identical_across_targets_and_threads():
    train, test, _, _ = _real_scores("mammography")
    x = np.concatenate([test] * 30)
    before = pynomaly.build_info()["simd"]
    try:
        outs = {}
        for t in TARGETS:
            _core.set_simd(t)
            for j in (1, 2):
                outs[(t, j)] = [S.linear(x, train, n_jobs=j), S.unify(x, train, n_jobs=j), S.zscore(x, train, n_jobs=j)]
    finally:
        _core.set_simd(before)
    first = next(iter(outs.values()))
    for got in outs.values():
        for a, b in zip(got, first):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", SMALL)
def test_ecdf_matches_searchsorted(name, simd):
    train, test, _, _ = _real_scores(name)
    ref_sorted = np.sort(train)
    srt = S.sort_scores(train)
    np.testing.assert_array_equal(srt, ref_sorted)
    probe = np.concatenate([test, train, [-np.inf, np.inf, train.min(), train.max()]])
    counts = S.ecdf_count(probe, srt, n_jobs=2)
    np.testing.assert_array_equal(counts, np.searchsorted(ref_sorted, probe, side="right"))
    np.testing.assert_array_equal(S.ecdf(probe, srt), counts / train.size)


def test_out_parameter_and_in_place():
    x = np.random.default_rng(0).normal(size=1000)
    ref = S.unify(x, x)
    y = x.copy()
    res = S.unify(y, S.describe(x), out=y)
    assert res is y or np.shares_memory(res, y)
    np.testing.assert_array_equal(y, ref)
    with pytest.raises(InvalidInputError, match="out must be"):
        S.linear(x, x, out=np.empty(999))
    with pytest.raises(InvalidInputError, match="out must be"):
        S.linear(x, x, out=np.empty(1000, dtype=np.float32))


# -- edge cases ----------------------------------------------------------------------------------
def test_single_score():
    x = np.array([0.42])
    assert S.threshold(x, 0.1) == 0.42
    st = S.describe(x)
    assert (st.n, st.mean, st.std, st.min, st.max) == (1, 0.42, 0.0, 0.42, 0.42)
    # scikit-learn: x * 1 + (0 - 0.42 * 1) with range 0 counted as 1
    np.testing.assert_array_equal(S.linear([0.0, 0.42, 1.0], x), [0.0, 0.0, 1.0 + (0.0 - 0.42)])
    np.testing.assert_array_equal(S.unify([0.0, 0.42, 1.0], x), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(S.zscore([0.0, 0.42], x), [-0.42, 0.0])
    np.testing.assert_array_equal(S.ecdf([0.0, 0.42, 1.0], x), [0.0, 1.0, 1.0])


def test_constant_scores_never_divide_by_zero():
    x = np.full(10_000, 3.0)
    with np.errstate(all="raise"):
        assert S.threshold(x, 0.1) == 3.0
        st = S.describe(x)
        assert st.std == 0.0
        np.testing.assert_array_equal(S.linear([2.0, 3.0, 3.5, 5.0], x), [0.0, 0.0, 0.5, 1.0])  # range 1
        np.testing.assert_array_equal(S.unify([2.0, 3.0, 3.5], x), [0.0, 0.0, 1.0])
        np.testing.assert_array_equal(S.zscore([2.0, 3.5], x), [-1.0, 0.5])


def test_nan_in_new_scores_propagates():
    train = np.linspace(0, 1, 101)
    x = np.array([0.5, np.nan, 2.0])
    for f in (S.linear, S.unify, S.zscore):
        out = f(x, train)
        assert np.isnan(out[1]) and not np.isnan(out[0]) and not np.isnan(out[2])
    srt = S.sort_scores(train)
    assert S.ecdf_count(x, srt)[1] == -1
    assert np.isnan(S.ecdf(x, srt)[1])


@pytest.mark.parametrize("bad_at", [0, 7, 999_999])
def test_nan_in_training_scores_is_a_clear_error(bad_at):
    x = np.random.default_rng(0).normal(size=1_000_000)
    x[bad_at] = np.nan
    for call in (lambda: S.threshold(x, 0.1), lambda: S.percentile(x, 50), lambda: S.describe(x), lambda: S.sort_scores(x)):
        with pytest.raises(InvalidInputError, match=f"NaN at index {bad_at}"):
            call()


def test_infinite_training_scores_rejected_for_moments():
    with pytest.raises(InvalidInputError, match="infinity at index 2"):
        S.describe([1.0, 2.0, np.inf])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: S.threshold([], 0.1), "empty"),
        (lambda: S.describe([]), "empty"),
        (lambda: S.percentile([1.0, 2.0], 101), r"\[0, 100\]"),
        (lambda: S.percentile([1.0, 2.0], float("nan")), r"\[0, 100\]"),
        (lambda: S.threshold([1.0, 2.0], 0.0), "contamination"),
        (lambda: S.threshold([1.0, 2.0], 0.7), "contamination"),
        (lambda: S.threshold([1.0, 2.0], "0.1"), "contamination"),
        (lambda: S.threshold(np.ones((3, 3)), 0.1), "1-dimensional"),
        (lambda: S.linear(["a", "b"], [1.0, 2.0]), "numeric"),
        (lambda: S.ecdf([1.0], []), "at least one training score"),
        (lambda: S.proba([1.0], [1.0, 2.0], method="softmax"), "'linear' or 'unify'"),
        (lambda: _core.unify(np.ones(3), float("nan"), 1.0), "mean must be finite"),
        (lambda: _core.zscore(np.ones(3), 0.0, -1.0), "std must be finite and >= 0"),
        (lambda: _core.minmax_scale(np.ones(3), 2.0, 1.0), "lo <= hi"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(InvalidInputError, match=match):
        call()


def test_column_vector_scores_accepted():
    x = np.arange(10.0)
    assert S.threshold(x.reshape(-1, 1), 0.1) == np.percentile(x, 90.0)


# -- detectors: PyOD's predict_proba / predict_confidence / predict ------------------------------
def _pyod_shim(model):
    """A PyOD BaseDetector that scores with `model`: PyOD's own methods become the oracle."""
    pyod_base = pytest.importorskip("pyod.models.base")

    class Shim(pyod_base.BaseDetector):
        def __init__(self, contamination=0.1):
            super().__init__(contamination=contamination)

        def fit(self, X, y=None):
            self.decision_scores_ = model.decision_scores_
            self._set_n_classes(y)
            self._process_decision_scores()
            return self

        def decision_function(self, X):
            return model.decision_function(X)

    return Shim(contamination=model.contamination).fit(None)


@pytest.mark.parametrize("name", ["glass", "cardio", "thyroid", "satellite"])
def test_predict_proba_and_confidence_equal_pyod(name, simd):
    _, _, model, Xt = _real_scores(name)
    Xt = Xt[:400]  # PyOD's confidence is O(n_train * n_test)
    ref = _pyod_shim(model)
    assert model.threshold_ == ref.threshold_
    np.testing.assert_array_equal(model.labels_, ref.labels_)
    np.testing.assert_array_equal(model.predict_proba(Xt, method="linear"), ref.predict_proba(Xt, method="linear"))
    np.testing.assert_allclose(
        model.predict_proba(Xt, method="unify"), ref.predict_proba(Xt, method="unify"), rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(model.predict_confidence(Xt), ref.predict_confidence(Xt), rtol=0, atol=1e-12)
    labels, conf = model.predict(Xt, return_confidence=True)
    ref_labels, ref_conf = ref.predict(Xt, return_confidence=True)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(conf, ref_conf, rtol=0, atol=1e-12)
    probs, conf2 = model.predict_proba(Xt, method="unify", return_confidence=True)
    np.testing.assert_array_equal(conf2, conf)
    value, conf3 = model.score_with_confidence(Xt, method="unify")
    np.testing.assert_array_equal(value, probs[:, 1])
    np.testing.assert_array_equal(conf3, conf)
    assert probs.shape == (len(Xt), 2)
    np.testing.assert_array_equal(probs[:, 0], 1 - probs[:, 1])


@pytest.mark.parametrize("name", ["glass", "cardio"])
def test_predict_with_rejection_equals_pyod(name):
    _, _, model, Xt = _real_scores(name)
    Xt = Xt[:400]
    ref = _pyod_shim(model)
    for T in (32, 4, 1):
        got = model.predict_with_rejection(Xt, T=T)
        with pytest.warns(UserWarning, match="cost of rejection"):  # PyOD warns at its own default c_r
            want = ref.predict_with_rejection(Xt, T=T)
        np.testing.assert_array_equal(got, want)
        assert model.rejection_threshold_ == ref.rejection_threshold_
    assert set(np.unique(model.predict_with_rejection(Xt, T=1))) == {-2, 0, 1}  # something was rejected
    labels, stats = model.predict_with_rejection(Xt, T=4, return_stats=True, delta=0.2, c_fp=2, c_fn=3, c_r=0.5)
    ref_labels, ref_stats = ref.predict_with_rejection(Xt, T=4, return_stats=True, delta=0.2, c_fp=2, c_fn=3, c_r=0.5)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(stats, ref_stats, rtol=1e-12)
    with pytest.raises(InvalidInputError, match=r"delta must be in \(0, 1\)"):
        model.predict_with_rejection(Xt, delta=1.5)


def test_predict_proba_rejects_unknown_method():
    _, _, model, Xt = _real_scores("glass")
    with pytest.raises(InvalidInputError, match="'linear' or 'unify'"):
        model.predict_proba(Xt, method="sigmoid")
    with pytest.raises(InvalidInputError, match="'linear' or 'unify'"):
        model.score_with_confidence(Xt, method="rank")


def test_unfitted_detector_errors():
    X, _ = _load("glass")
    m = pynomaly.IsolationForest()
    for call in (lambda: m.predict_proba(X), lambda: m.predict_confidence(X), lambda: m.predict(X)):
        with pytest.raises(NotFittedError):
            call()


# -- decisions follow contamination / threshold after fit --------------------------------------
@pytest.fixture
def fitted():
    X, _ = _load("cardio")
    return pynomaly.IsolationForest(n_estimators=50, random_state=3).fit(X), X


@pytest.mark.parametrize("how", ["attribute", "set_params"])
def test_contamination_after_fit_rederives_threshold_and_labels(fitted, how):
    model, X = fitted
    forest_before = model._forest
    for c in (0.2, 0.05, 0.5):
        if how == "attribute":
            model.contamination = c
        else:
            assert model.set_params(contamination=c) is model
        fresh = pynomaly.IsolationForest(n_estimators=50, random_state=3, contamination=c).fit(X)
        assert model.threshold_ == fresh.threshold_ == np.percentile(model.decision_scores_, 100 * (1 - c))
        np.testing.assert_array_equal(model.labels_, fresh.labels_)
        np.testing.assert_array_equal(model.predict(X), fresh.predict(X))
    assert model._forest is forest_before  # not refitted


@pytest.mark.parametrize("how", ["attribute", "set_params"])
def test_explicit_threshold_after_fit(fitted, how):
    model, X = fitted
    t = float(np.median(model.decision_scores_))
    if how == "attribute":
        model.threshold = t
    else:
        model.set_params(threshold=t)
    assert model.threshold_ == t
    np.testing.assert_array_equal(model.labels_, (model.decision_scores_ > t).astype(int))
    np.testing.assert_array_equal(model.predict(X), (model.decision_function(X) > t).astype(int))
    # confidence then uses the labelled share, as PyOD does for thresholds not set from a rate
    conf = model.predict_confidence(X[:50])
    assert conf.shape == (50,) and np.all((conf >= 0) & (conf <= 1))
    model.threshold = None  # back to the contamination rate
    assert model.threshold_ == np.percentile(model.decision_scores_, 100 * (1 - model.contamination))
    model.threshold = t
    model.contamination = 0.2  # a new rate replaces the explicit threshold
    assert model.threshold is None
    assert model.threshold_ == np.percentile(model.decision_scores_, 80.0)


def test_threshold_before_fit_is_used_by_fit():
    X, _ = _load("glass")
    m = pynomaly.IsolationForest(random_state=0)
    m.threshold = 0.55
    m.fit(X)
    assert m.threshold_ == 0.55
    np.testing.assert_array_equal(m.labels_, (m.decision_scores_ > 0.55).astype(int))


@pytest.mark.parametrize("bad", [0.0, 0.6, -0.1, "0.1", None, True])
def test_invalid_contamination_after_fit_is_rejected_and_state_kept(fitted, bad):
    model, _ = fitted
    before = (model.contamination, model.threshold_, model.labels_.copy())
    with pytest.raises(InvalidInputError, match="contamination"):
        model.contamination = bad
    with pytest.raises(InvalidInputError, match="contamination"):
        model.set_params(contamination=bad)
    assert model.contamination == before[0] and model.threshold_ == before[1]
    np.testing.assert_array_equal(model.labels_, before[2])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "high", True])
def test_invalid_threshold_rejected(fitted, bad):
    model, _ = fitted
    with pytest.raises(InvalidInputError, match="threshold must be a finite number"):
        model.threshold = bad


def test_set_params_still_rejects_unknown_names(fitted):
    model, _ = fitted
    with pytest.raises(InvalidInputError, match="no parameter 'thresh'"):
        model.set_params(thresh=0.5)


def test_clone_and_get_params_unchanged(fitted):
    sklearn_base = pytest.importorskip("sklearn.base")
    model, X = fitted
    model.contamination = 0.2
    c = sklearn_base.clone(model)
    assert c.get_params() == model.get_params()
    assert "threshold" not in c.get_params()
    assert not hasattr(c, "threshold_")
    c.fit(X)
    assert c.threshold_ == np.percentile(c.decision_scores_, 80.0)


def test_from_sklearn_without_training_scores():
    ensemble = pytest.importorskip("sklearn.ensemble")
    X, _ = _load("cardio")
    m = pynomaly.IsolationForest.from_sklearn(ensemble.IsolationForest(random_state=0).fit(X))
    assert m.decision_scores_ is None
    with pytest.raises(NotFittedError, match="training scores"):
        m.predict_proba(X)
    with pytest.raises(NotFittedError, match="training scores"):
        m.predict_confidence(X)
    before = m.threshold_
    with pytest.raises(InvalidInputError, match="set `threshold`"):
        m.contamination = 0.2
    assert m.threshold_ == before
    m.threshold = 0.6
    np.testing.assert_array_equal(m.predict(X), (m.decision_function(X) > 0.6).astype(int))


def test_from_pyod_and_from_bytes_keep_working():
    iforest = pytest.importorskip("pyod.models.iforest")
    X, _ = _load("cardio")
    p = iforest.IForest(random_state=0, contamination=0.07).fit(X)
    m = pynomaly.IsolationForest.from_pyod(p)
    np.testing.assert_array_equal(m.labels_, p.labels_)
    assert m.contamination == 0.07
    probs = m.predict_proba(X[:20])
    assert probs.shape == (20, 2)
    m2 = pynomaly.IsolationForest.from_bytes(m.to_bytes())
    np.testing.assert_array_equal(m2.predict_proba(X[:20]), probs)
    m3 = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(m3.predict_proba(X[:20], method="unify"), m.predict_proba(X[:20], method="unify"))
    m2.contamination = 0.2
    assert m2.threshold_ == np.percentile(m2.decision_scores_, 80.0)


def test_training_stats_cache_follows_refit():
    X, _ = _load("glass")
    m = pynomaly.IsolationForest(n_estimators=20, random_state=0).fit(X)
    p1 = m.predict_proba(X)
    m.set_params(random_state=1).fit(X[:100])
    ref = _pyod_shim(m)
    np.testing.assert_array_equal(m.predict_proba(X), ref.predict_proba(X))
    assert not np.array_equal(p1, m.predict_proba(X))


def test_import_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, pynomaly, pynomaly.scores, pynomaly.combine; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'sklearn', 'pyod', 'combo'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
