"""IsolationForest: exactness against scikit-learn and PyOD, accuracy on real data, the
estimator contract, input handling, serialization and long calls. Determinism, SIMD targets
and the scoring kernels: test_iforest_kernels.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import pynomaly
from pynomaly import InvalidInputError, IsolationForest, ModelFormatError, NotFittedError, PynomalyError

from conftest import ALL_DATASETS, SMALL_DATASETS, blobs as _blobs, dataset_params, load_dataset

sklearn_ensemble = pytest.importorskip("sklearn.ensemble")
from sklearn.metrics import roc_auc_score  # noqa: E402


# -- exactness: imported peers' forests score exactly as the peers do ------------------------
@pytest.mark.parametrize("name", dataset_params(ALL_DATASETS))
def test_from_sklearn_scores_equal_score_samples(name):
    X, _ = load_dataset(name)
    sk = sklearn_ensemble.IsolationForest(random_state=1).fit(X)
    ours = IsolationForest.from_sklearn(sk)
    np.testing.assert_allclose(ours.decision_function(X), -sk.score_samples(X), rtol=0, atol=1e-12)
    # predict agrees with scikit-learn's (-1 outlier / 1 inlier)
    np.testing.assert_array_equal(ours.predict(X), (sk.predict(X) == -1).astype(int))


@pytest.mark.parametrize("name", dataset_params([n for n in SMALL_DATASETS if n in ("cardio", "glass", "thyroid")]))
def test_contamination_auto_is_scikit_learns_threshold(name):
    X, _ = load_dataset(name)
    sk = sklearn_ensemble.IsolationForest(random_state=1).fit(X)  # contamination="auto", its default
    ours = IsolationForest.from_sklearn(sk)
    assert ours.contamination == "auto" and ours.threshold_ == 0.5 == -sk.offset_
    np.testing.assert_array_equal(ours.predict(X), (sk.predict(X) == -1).astype(np.int64))
    # A forest of our own: the same fixed cut on the same score scale, not a rate.
    m = IsolationForest(contamination="auto", random_state=0).fit(X)
    assert m.threshold_ == 0.5
    np.testing.assert_array_equal(m.labels_, (m.decision_scores_ > 0.5).astype(np.int64))
    np.testing.assert_array_equal(m.predict(X), m.labels_)
    assert abs(m.labels_.mean() - (sk.predict(X) == -1).mean()) < 0.05
    back = IsolationForest.from_bytes(m.to_bytes())
    assert back.contamination == "auto" and back.threshold_ == 0.5
    # Switching between a rate and "auto" after fit re-derives the decision.
    m.contamination = 0.1
    assert m.threshold_ == np.percentile(m.decision_scores_, 90)
    m.set_params(contamination="auto")
    assert m.threshold_ == 0.5
    with pytest.raises(InvalidInputError, match="contamination must be a float"):
        IsolationForest(contamination="automatic").fit(X)


@pytest.mark.parametrize("name", dataset_params([n for n in SMALL_DATASETS if n in ("cardio", "glass", "thyroid")]))
def test_feature_importances_count_splits_as_pyods_expect(name):
    pyod_iforest = pytest.importorskip("pyod.models.iforest")
    X, _ = load_dataset(name)
    ref = pyod_iforest.IForest(n_estimators=200, random_state=0).fit(X)
    ours = IsolationForest.from_pyod(ref)
    got = ours.feature_importances_
    # Same trees: each tree's share of splits per feature, counted on scikit-learn's own trees.
    shares = []
    for tree in ref.detector_.estimators_:
        f = tree.tree_.feature[tree.tree_.feature >= 0]
        shares.append(np.bincount(f, minlength=X.shape[1]) / len(f))
    np.testing.assert_allclose(got, np.mean(shares, axis=0), rtol=1e-12)
    assert got.shape == (X.shape[1],) and abs(got.sum() - 1) < 1e-12
    # PyOD weighs each split by the impurity drop of random targets; a split's drop is one
    # variance in expectation, so the two agree up to the noise of that one draw of targets.
    np.testing.assert_allclose(got, ref.feature_importances_, atol=0.03)


def test_feature_importances_of_own_forests():
    X = np.column_stack([_blobs(500, 3), np.ones(500)])  # the constant column cannot be split
    imp = IsolationForest(random_state=0).fit(X).feature_importances_
    assert imp[3] == 0 and abs(imp.sum() - 1) < 1e-12 and np.all(imp[:3] > 0.25)
    np.testing.assert_array_equal(IsolationForest(random_state=0).fit(np.ones((50, 2))).feature_importances_, [0, 0])
    with pytest.raises(NotFittedError):
        IsolationForest().feature_importances_


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_features=0.5),
        dict(max_samples=0.9, n_estimators=20),  # deep trees: sparse layout on big sets
        dict(max_samples=64, max_features=3, n_estimators=37),
        dict(max_samples=3000, n_estimators=10),  # depth 12, the deepest complete layout
    ],
)
@pytest.mark.parametrize("name", ["cardio", "satellite", "annthyroid"])
def test_from_sklearn_exact_with_options(name, kwargs):
    X, _ = load_dataset(name)
    if isinstance(kwargs.get("max_samples"), int):
        kwargs = {**kwargs, "max_samples": min(kwargs["max_samples"], len(X))}
    sk = sklearn_ensemble.IsolationForest(random_state=3, **kwargs).fit(X)
    ours = IsolationForest.from_sklearn(sk)
    np.testing.assert_allclose(ours.decision_function(X), -sk.score_samples(X), rtol=0, atol=1e-12)
    Xf = np.asfortranarray(X[::2].astype(np.float32))  # float32, Fortran order, no copy needed
    np.testing.assert_allclose(ours.decision_function(Xf), -sk.score_samples(Xf), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", dataset_params(ALL_DATASETS))
def test_from_pyod_equals_pyod_shifted_by_offset(name):
    pyod_iforest = pytest.importorskip("pyod.models.iforest")
    X, _ = load_dataset(name)
    pm = pyod_iforest.IForest(random_state=2).fit(X)
    ours = IsolationForest.from_pyod(pm)
    offset = pm.detector_.offset_
    np.testing.assert_allclose(ours.decision_function(X), pm.decision_function(X) - offset, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours.predict(X), pm.predict(X))
    np.testing.assert_array_equal(ours.labels_, pm.labels_)


# -- accuracy of our own forest on real data --------------------------------------------------
def test_roc_auc_matches_sklearn_on_real_datasets():
    if not ALL_DATASETS:
        pytest.skip("no datasets available")
    ours_mean, theirs_mean, worst = [], [], []
    for name in ALL_DATASETS:
        X, y = load_dataset(name)
        if name == "http":  # 567k rows: a fixed random half keeps the test quick
            idx = np.random.default_rng(0).choice(len(X), 150_000, replace=False)
            X, y = X[idx], y[idx]
        a = np.mean([roc_auc_score(y, IsolationForest(random_state=s, n_jobs=-1).fit(X).decision_scores_) for s in range(5)])
        b = np.mean(
            [roc_auc_score(y, -sklearn_ensemble.IsolationForest(random_state=s, n_jobs=-1).fit(X).score_samples(X)) for s in range(5)]
        )
        ours_mean.append(a)
        theirs_mean.append(b)
        worst.append((a - b, name))
    assert np.mean(ours_mean) >= np.mean(theirs_mean) - 0.005, (np.mean(ours_mean), np.mean(theirs_mean))
    assert min(worst)[0] >= -0.03, min(worst)


# -- the estimator contract ------------------------------------------------------------------
def test_pyod_conventions():
    X = _blobs()
    m = IsolationForest(contamination=0.05, random_state=0)
    assert m.fit(X) is m
    s = m.decision_scores_
    assert s.shape == (len(X),) and np.all((s > 0) & (s <= 1))
    assert m.threshold_ == pytest.approx(np.percentile(s, 95))
    np.testing.assert_array_equal(m.labels_, (s > m.threshold_).astype(int))
    np.testing.assert_array_equal(m.predict(X), m.labels_)
    np.testing.assert_array_equal(m.fit_predict(X), m.labels_)
    # the planted outliers score highest
    assert s[: len(X) // 50].mean() > np.percentile(s, 99) - 0.05
    assert m.predict(X).dtype.kind == "i"


def test_params_and_sklearn_tools():
    from sklearn.base import clone

    m = IsolationForest(n_estimators=10, max_samples=32, random_state=0)
    assert m.get_params()["max_samples"] == 32
    c = clone(m)
    assert c.get_params() == m.get_params() and c is not m
    m.set_params(n_estimators=5)
    assert m.n_estimators == 5
    with pytest.raises(InvalidInputError, match="no parameter"):
        m.set_params(bogus=1)
    assert "IsolationForest(" in repr(m)


def test_max_samples_and_features_resolution():
    X = _blobs(500, 6)
    assert IsolationForest(random_state=0).fit(X).max_samples_ == 256
    assert IsolationForest(max_samples=0.5, random_state=0).fit(X).max_samples_ == 250
    with pytest.warns(UserWarning, match="greater than the number of rows"):
        assert IsolationForest(max_samples=1000, random_state=0).fit(X).max_samples_ == 500
    m = IsolationForest(max_features=2, random_state=0).fit(X)
    used = set(m._forest.arrays()["feature"]) - {-1}
    assert len(used) <= 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(contamination=0.0), "contamination"),
        (dict(contamination=0.6), "contamination"),
        (dict(n_estimators=0), "n_estimators"),
        (dict(max_samples="all"), "max_samples"),
        (dict(max_samples=1.5), "max_samples"),
        (dict(max_features=0), "max_features"),
        (dict(max_features=99), "max_features"),
        (dict(random_state=-1), "random_state"),
        (dict(n_jobs=0), "n_jobs"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        IsolationForest(**kwargs).fit(_blobs(100, 3))


# -- input handling -----------------------------------------------------------------------
def test_accepted_input_layouts_score_identically():
    X = _blobs(1500, 5)
    m = IsolationForest(random_state=0).fit(X)
    ref = m.decision_function(X)
    Xf = np.asfortranarray(X)
    strided = np.zeros((1500, 10))
    strided[:, ::2] = X
    variants = [Xf, strided[:, ::2], X.tolist(), X.astype(np.float32).astype(np.float64)]
    for v in variants[:3]:
        np.testing.assert_array_equal(m.decision_function(v), ref)
    # ints and bools are converted once
    Xi = (X * 100).astype(np.int32)
    mi = IsolationForest(random_state=0).fit(Xi)
    np.testing.assert_array_equal(mi.decision_function(Xi), mi.decision_function(Xi.astype(np.float64)))
    # reversed rows (negative stride)
    np.testing.assert_array_equal(m.decision_function(X[::-1]), ref[::-1])


def test_float32_input_equals_float64_rounded():
    X = _blobs(1000, 4)
    m = IsolationForest(random_state=0).fit(X)
    np.testing.assert_array_equal(m.decision_function(X.astype(np.float32)), m.decision_function(X))


def test_pandas_dataframe():
    pd = pytest.importorskip("pandas")
    X = _blobs(300, 3)
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    m = IsolationForest(random_state=0).fit(df)
    np.testing.assert_array_equal(m.decision_function(df), m.decision_function(X))
    df["s"] = ["x"] * len(df)
    with pytest.raises(InvalidInputError, match=r"non-numeric column\(s\) \['s'\]"):
        m.fit(df)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
@pytest.mark.parametrize("where", ["fit", "score"])
def test_non_finite_values_are_rejected(bad, where):
    X = _blobs(3000, 4)
    m = IsolationForest(random_state=0).fit(X)
    X2 = X.copy()
    X2[2500, 3] = bad
    with pytest.raises(InvalidInputError, match="row 2500, column 3"):
        if where == "fit":
            IsolationForest(random_state=0).fit(X2)
        else:
            m.decision_function(X2)
    with pytest.raises(InvalidInputError, match="row 0, column 1"):
        one = X[:1].copy()
        one[0, 1] = bad
        m.decision_function(one)


def test_shape_and_type_errors():
    m = IsolationForest(random_state=0).fit(_blobs(200, 4))
    with pytest.raises(InvalidInputError, match="X has 3 features, but IsolationForest is expecting 4 features as input"):
        m.decision_function(np.zeros((5, 3)))
    with pytest.raises(InvalidInputError, match="0 rows"):
        m.decision_function(np.zeros((0, 4)))
    with pytest.raises(InvalidInputError, match=r"Reshape your data: X\.reshape\(1, -1\) for a single row"):
        m.decision_function(np.zeros(4))
    with pytest.raises(InvalidInputError, match="must be numeric"):
        m.decision_function(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(InvalidInputError, match="cannot be read"):
        m.decision_function([[1, 2, 3, 4], [1, 2]])
    with pytest.raises(InvalidInputError, match=r"0 feature\(s\) \(shape=\(10, 0\)\)"):
        IsolationForest().fit(np.zeros((10, 0)))
    with pytest.raises(InvalidInputError, match="0 rows"):
        IsolationForest().fit(np.zeros((0, 3)))
    with pytest.raises(InvalidInputError, match=r"n_samples=1\); an isolation forest needs at least 2 rows"):
        IsolationForest().fit(np.zeros((1, 3)))
    assert issubclass(InvalidInputError, ValueError) and issubclass(InvalidInputError, PynomalyError)


def test_unfitted_model():
    m = IsolationForest()
    for call in (m.decision_function, m.predict):
        with pytest.raises(NotFittedError, match="not fitted"):
            call(np.zeros((2, 2)))
    with pytest.raises(NotFittedError):
        m.to_bytes()


def test_constant_and_duplicate_data():
    X = np.ones((100, 3))
    m = IsolationForest(random_state=0).fit(X)
    assert np.all(np.isfinite(m.decision_scores_)) and np.ptp(m.decision_scores_) == 0
    X2 = np.vstack([np.zeros((500, 2)), [[5.0, 5.0]]])
    s = IsolationForest(random_state=0).fit(X2).decision_scores_
    assert s[-1] > s[0]


def test_large_input_memory_stays_flat():
    # 2M rows scored in chunks: the result is the only large allocation.
    X = _blobs(2000, 4)
    m = IsolationForest(n_estimators=10, random_state=0).fit(X)
    big = np.broadcast_to(X[:1], (2_000_000, 4))  # zero-stride rows: no memory behind them
    s = m.decision_function(big)
    assert s.shape == (2_000_000,) and np.all(s == s[0])


# -- serialization --------------------------------------------------------------------------
def test_bytes_round_trip_and_pickle():
    X = _blobs()
    m = IsolationForest(n_estimators=50, max_features=0.5, contamination=0.05, random_state=3).fit(X)
    b = m.to_bytes()
    assert b[:8] == b"PYNOMALY"
    m2 = IsolationForest.from_bytes(b)
    np.testing.assert_array_equal(m2.decision_function(X), m.decision_function(X))
    np.testing.assert_array_equal(m2.decision_scores_, m.decision_scores_)
    assert m2.threshold_ == m.threshold_ and m2.get_params() == m.get_params()
    np.testing.assert_array_equal(m2.labels_, m.labels_)
    m3 = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(m3.decision_function(X), m.decision_function(X))
    u = pickle.loads(pickle.dumps(IsolationForest(n_estimators=7)))
    assert u.n_estimators == 7 and not hasattr(u, "_forest")
    sk = sklearn_ensemble.IsolationForest(random_state=0).fit(X)
    imported = IsolationForest.from_bytes(IsolationForest.from_sklearn(sk).to_bytes())
    np.testing.assert_allclose(imported.decision_function(X), -sk.score_samples(X), atol=1e-12, rtol=0)


def test_corrupted_bytes_are_rejected():
    b = IsolationForest(n_estimators=5, random_state=0).fit(_blobs(300, 3)).to_bytes()
    with pytest.raises(ModelFormatError, match="magic"):
        IsolationForest.from_bytes(b"X" + b[1:])
    for cut in (0, 10, 40, len(b) // 2, len(b) - 1):
        with pytest.raises(ModelFormatError):
            IsolationForest.from_bytes(b[:cut])
    rng = np.random.default_rng(0)
    for _ in range(200):
        flipped = bytearray(b)
        i = int(rng.integers(len(b)))
        flipped[i] ^= 1 << int(rng.integers(8))
        with pytest.raises(ModelFormatError):
            IsolationForest.from_bytes(bytes(flipped))
    with pytest.raises(ModelFormatError, match="version"):
        IsolationForest.from_bytes(b[:8] + (99).to_bytes(4, "little") + b[12:])
    with pytest.raises(ModelFormatError, match="bytes-like"):
        IsolationForest.from_bytes("not bytes")


def test_malicious_node_arrays_are_rejected_by_the_core():
    """A file with a valid checksum but hostile indices must not read out of bounds."""
    from pynomaly.estimators import _format

    m = IsolationForest(n_estimators=2, random_state=0).fit(_blobs(300, 3))
    arrays = m._forest.arrays()
    cases = {
        "feature out of range": ("feature", lambda a: a.__setitem__(0, 1000)),
        "child indices out of range": ("left", lambda a: a.__setitem__(0, 10_000)),
        "child before parent (cycle)": ("left", lambda a: a.__setitem__(0, 0)),
        "negative feature": ("feature", lambda a: a.__setitem__(0, -5)),
    }
    for what, (key, mutate) in cases.items():
        arrs = {k: v.copy() for k, v in arrays.items()}
        mutate(arrs[key])

        class Fake:
            pass

        fake = Fake()
        fake._forest = type("F", (), {"arrays": lambda self: arrs, "n_features": 3, "psi": 256, "n_trees": 2})()
        fake.decision_scores_ = None
        fake.max_samples_ = 256
        fake.threshold_ = 0.5
        fake.get_params = m.get_params
        blob = _format.dump_forest(fake)
        with pytest.raises(ModelFormatError, match="inconsistent"):
            IsolationForest.from_bytes(blob)


def test_a_forest_written_without_a_threshold_scores_but_does_not_label():
    """The model format's forest header allows "threshold": null (pynomaly.dask ships a forest
    before its threshold is derived): it loads and scores; what decides asks for a threshold
    with a clear error rather than a TypeError."""
    X = np.random.default_rng(3).standard_normal((200, 4))
    model = pynomaly.IsolationForest(n_estimators=10, random_state=0).fit(X)
    model.threshold_, model.labels_ = None, None
    loaded = pynomaly.IsolationForest.from_bytes(model.to_bytes())
    assert loaded.threshold_ is None
    np.testing.assert_array_equal(loaded.decision_function(X[:5]), model.decision_function(X[:5]))
    for decide in (loaded.predict, loaded.predict_confidence, lambda X: loaded.serving_handle("m", 1)):
        with pytest.raises(pynomaly.NotFittedError, match="has no threshold"):
            decide(X[:5])
    loaded.threshold = 0.6
    assert set(loaded.predict(X[:5])) <= {0, 1}


# -- threads ---------------------------------------------------------------------------------
def test_ctrl_c_stops_a_long_call(ctrl_c):
    import _thread
    import threading
    import time

    X = _blobs(2000, 16)
    m = IsolationForest(n_estimators=100, random_state=0).fit(X)
    big = np.broadcast_to(X[:1], (25_000_000, 16))  # zero-stride rows, no memory: many seconds of work
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        m.decision_function(big)
    elapsed = time.perf_counter() - t0
    timer.cancel()
    assert elapsed < 5.0, elapsed  # stopped early, not after the whole call
    # the model still works afterwards
    assert m.decision_function(X[:3]).shape == (3,)


def test_fit_reports_progress_per_tree_and_can_be_stopped_by_it():
    """Issue 16.10: the native fit reports the share of trees grown, from the calling thread;
    the forest is the same with or without a progress callback."""
    X = np.random.default_rng(3).standard_normal((20_000, 8))
    seen = []
    model = pynomaly.IsolationForest(n_estimators=3000, random_state=0).fit(X, progress=seen.append)
    assert seen and all(0.0 <= f <= 1.0 for f in seen) and seen == sorted(seen)
    plain = pynomaly.IsolationForest(n_estimators=3000, random_state=0).fit(X)
    np.testing.assert_array_equal(model.decision_scores_, plain.decision_scores_)

    class Stop(Exception):
        pass

    def stop(fraction):
        if fraction > 0:
            raise Stop

    with pytest.raises(Stop):
        pynomaly.IsolationForest(n_estimators=20_000, random_state=0).fit(X, progress=stop)


def test_a_progress_that_is_not_callable_is_refused_before_the_core():
    X = np.random.default_rng(0).standard_normal((50, 3))
    with pytest.raises(pynomaly.InvalidInputError, match="progress must be a callable"):
        pynomaly.IsolationForest(n_estimators=5).fit(X, progress="50%")


def test_the_split_fit_bindings_refuse_bad_plans():
    """forest_plan / forest_grow (the two steps pynomaly.dask runs apart) check what they are
    given before the core reads it: shapes, indices in range, a plan Forest.train could make."""
    from pynomaly import _core

    X = np.random.default_rng(0).normal(size=(50, 3))
    plan = _core.forest_plan(50, 3, 4, 16, 0, 7)
    rows, feats, state = plan["rows"], plan["features"], plan["rng_state"]
    grown = _core.forest_grow(X, rows, rows, feats, state)
    want = pynomaly.IsolationForest(n_estimators=4, max_samples=16, random_state=7).fit(X)
    assert np.array_equal(grown["threshold"], want._forest.arrays()["threshold"])
    bad = [
        (X, rows + 50, rows, feats, state),  # x_rows past X's rows
        (X, rows - 100, rows, feats, state),  # negative
        (X, rows, rows, feats + 3, state),  # a feature past X's columns
        (X, rows, rows, feats, state[:2]),  # T disagrees
        (X, rows[:, :1], rows[:, :1], feats, state),  # 1 row per tree
        (X, rows[:0], rows[:0], feats[:0], state[:0]),  # no trees
        (X, rows, rows, feats[:, :0], state),  # no features
        (X, rows.ravel(), rows, feats, state),  # wrong rank
    ]
    for args in bad:
        with pytest.raises(InvalidInputError, match="forest_grow"):
            _core.forest_grow(*args)
    with pytest.raises(InvalidInputError):
        _core.forest_plan(50, 3, 4, 51, 0, 7)  # max_samples above n
