"""LOF against scikit-learn's LocalOutlierFactor and KNN against PyOD's KNN on real data;
novelty and outlier modes, duplicates, threads, serialization, bad input."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

import pynomaly
from pynomaly import KNN, LOF, InvalidInputError, ModelFormatError, NotFittedError

# LOF warns, as scikit-learn does, when duplicates make scores explode: several datasets here
# are duplicate-heavy on purpose. The warning itself is tested below (check_lof and its own test).
pytestmark = pytest.mark.filterwarnings("ignore:Duplicate values are leading:UserWarning")

REPO = Path(__file__).resolve().parents[2]
DATASETS = Path(os.environ.get("PYNOMALY_DATASETS", REPO.parent / "shared" / "datasets"))
SMALL = ["glass", "wbc", "ionosphere", "breastw", "pima", "vowels", "letter", "cardio", "cardiotocography",
         "musk", "thyroid", "optdigits", "satimage_2", "satellite", "landsat", "pendigits", "annthyroid",
         "mnist", "mammography", "smtp"]
LARGE = ["shuttle", "aloi"]  # ~49k rows: a random 12k-row sample keeps scikit-learn's side quick


def load(name: str, max_rows: int = 20000):
    path = DATASETS / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"dataset {path} not found (set PYNOMALY_DATASETS)")
    with np.load(path) as f:
        X, y = np.asarray(f["X"], dtype=np.float64), np.asarray(f["y"])
    if name in LARGE:
        rows = np.sort(np.random.default_rng(0).choice(len(X), 12000, replace=False))
        return X[rows], y[rows]
    return X[:max_rows], y[:max_rows]


def unique_sets(X, k, Y=None) -> np.ndarray:
    """Per query row: whether its k nearest neighbours are a unique set (the k-th and
    (k+1)-th distances differ), so that every exact implementation must find the same set."""
    dist, _ = pynomaly.knn(X, k + 1, Y=Y)
    return dist[:, k] - dist[:, k - 1] > 1e-9 * np.maximum(dist[:, k], 1e-300)


def has_ties(X, k) -> bool:
    return not bool(np.all(unique_sets(X, k)))


def determined(X, k, Y=None) -> np.ndarray:
    """Rows whose LOF does not depend on how ties are broken: their own neighbour set and
    those of all their neighbours are unique (LOF reads lrd of the neighbours)."""
    u = unique_sets(X, k)
    _, idx = pynomaly.knn(X, k, Y=Y)
    own = u if Y is None else unique_sets(X, k, Y=Y)
    return own & np.all(u[idx], axis=1)


def sklearn_lof(X, k, novelty=False, algorithm=None):
    from sklearn.neighbors import LocalOutlierFactor

    # Trees give exact distances (brute's |x|^2 - 2x.y + |y|^2 does not): compare like with like.
    if algorithm is None:
        algorithm = "kd_tree" if X.shape[1] <= 16 else "ball_tree"
    with warnings.catch_warnings():
        # scikit-learn's own note that duplicates make its scores depend on tie-breaking.
        warnings.filterwarnings("ignore", message="Duplicate values are leading", category=UserWarning)
        return LocalOutlierFactor(n_neighbors=k, algorithm=algorithm, novelty=novelty).fit(X)


def auc(y, s):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, s)


def check_lof(name, max_rows=20000):
    X, y = load(name, max_rows)
    k = 20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = LOF(n_neighbors=k).fit(X)
    theirs = sklearn_lof(X, k)
    expected = -theirs.negative_outlier_factor_
    # The duplicates warning comes exactly where scikit-learn gives it.
    assert any("Duplicate values" in str(w.message) for w in caught) == (expected.max() > 1e7)
    assert np.all(np.isfinite(ours.decision_scores_))
    # The k-distance never depends on ties.
    np.testing.assert_allclose(ours._kdist, theirs._distances_fit_X_[:, -1], rtol=1e-12, atol=1e-300)
    if not has_ties(X, k):
        np.testing.assert_allclose(ours.decision_scores_, expected, rtol=1e-9)
        return
    # Duplicates: each implementation picks its own neighbours among equals. Rows whose score
    # does not depend on that choice must agree exactly. The ranking of anomalies must agree
    # to 1e-3 of ROC-AUC, or, where scikit-learn's own algorithms (which break ties
    # differently) disagree by more, lie within that disagreement of them.
    rows = determined(X, k)
    np.testing.assert_allclose(ours.decision_scores_[rows], expected[rows], rtol=1e-9)
    theirs_auc = [auc(y, -sklearn_lof(X, k, algorithm=a).negative_outlier_factor_) for a in ("kd_tree", "ball_tree", "brute")]
    lo, hi = min(theirs_auc), max(theirs_auc)
    ours_auc = auc(y, ours.decision_scores_)
    assert max(lo - ours_auc, ours_auc - hi, 0.0) <= max(1e-3, hi - lo), (ours_auc, theirs_auc)


@pytest.mark.parametrize("name", SMALL + LARGE)
def test_lof_equals_sklearn_on_real_data(name):
    check_lof(name)


def test_duplicate_heavy_data_is_detected_as_tied():
    # The datasets the issue names as duplicate-heavy really exercise the tie branch above.
    for name in ("breastw", "thyroid", "mammography", "smtp"):
        X, _ = load(name)
        assert has_ties(X, 20), name


@pytest.mark.parametrize("name", ["cardio", "pendigits", "satellite", "mammography"])
def test_novelty_scores_equal_sklearn_score_samples(name):
    X, y = load(name)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(X))
    train, test = X[perm[: len(X) // 2]], X[perm[len(X) // 2 :]]
    ours = LOF(n_neighbors=20, novelty=True).fit(train)
    theirs = sklearn_lof(train, 20, novelty=True)
    expected = -theirs.score_samples(test)
    got = ours.decision_function(test)
    rows = determined(train, 20, Y=test)
    assert rows.sum() > 500  # the comparison below is not vacuous
    np.testing.assert_allclose(got[rows], expected[rows], rtol=1e-9)
    y_test = y[perm[len(X) // 2 :]]
    assert abs(auc(y_test, got) - auc(y_test, expected)) < 1e-3
    np.testing.assert_array_equal(ours.predict(test), (got > ours.threshold_).astype(int))


def test_outlier_mode_scores_only_training_rows():
    X, _ = load("cardio")
    m = LOF().fit(X)
    assert m.labels_.shape == (len(X),) and set(np.unique(m.labels_)) <= {0, 1}
    np.testing.assert_array_equal(m.fit_predict(X), m.labels_)
    with pytest.raises(InvalidInputError, match="novelty=True"):
        m.decision_function(X)


@pytest.mark.parametrize("method", ["largest", "mean", "median"])
@pytest.mark.parametrize("name", ["cardio", "breastw", "thyroid", "satimage_2", "mammography"])
def test_knn_equals_pyod(method, name):
    from pyod.models.knn import KNN as PyodKNN

    X, _ = load(name)
    rng = np.random.default_rng(1)
    Z = X[rng.choice(len(X), 300, replace=False)] + rng.normal(0, 0.01, (300, X.shape[1]))
    ours = KNN(n_neighbors=5, method=method).fit(X)
    theirs = PyodKNN(n_neighbors=5, method=method).fit(X)
    # Distances (not neighbour indices) decide KNN scores, so ties do not matter here. PyOD
    # searches with scikit-learn's "auto", which is brute force (|x|^2 - 2x.y + |y|^2, ~1e-11
    # relative error) above 15 features; ours are exact.
    rtol = 1e-12 if X.shape[1] <= 15 else 1e-9
    np.testing.assert_allclose(ours.decision_scores_, theirs.decision_scores_, rtol=rtol, atol=1e-300)
    np.testing.assert_allclose(ours.decision_function(Z), theirs.decision_function(Z), rtol=rtol, atol=1e-300)
    assert ours.threshold_ == pytest.approx(theirs.threshold_, rel=rtol)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_array_equal(ours.predict(Z), theirs.predict(Z))


def test_scores_do_not_depend_on_threads_or_algorithm():
    X, _ = load("mammography")
    base = LOF(n_jobs=1, algorithm="brute").fit(X).decision_scores_
    for kw in ({"n_jobs": 2, "algorithm": "brute"}, {"n_jobs": 2, "algorithm": "kd_tree"}, {"n_jobs": -1}):
        np.testing.assert_array_equal(LOF(**kw).fit(X).decision_scores_, base)


@pytest.mark.parametrize("cls, kw", [(LOF, {"novelty": True}), (KNN, {"method": "mean"})])
def test_serialization_round_trip(cls, kw):
    X, _ = load("pendigits")
    Z = X[:200] + 0.5
    m = cls(n_neighbors=7, **kw).fit(X.astype(np.float32))
    data = m.to_bytes()
    assert data[12:20] == cls._kind and b"pickle" not in data[:200]
    back = cls.from_bytes(data)
    np.testing.assert_array_equal(back.decision_function(Z), m.decision_function(Z))
    np.testing.assert_array_equal(back.decision_scores_, m.decision_scores_)
    np.testing.assert_array_equal(back.labels_, m.labels_)
    assert back.threshold_ == m.threshold_ and back.get_params() == m.get_params()
    again = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(again.decision_function(Z), m.decision_function(Z))
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    with pytest.raises(ModelFormatError, match="checksum"):
        cls.from_bytes(bytes(corrupt))
    with pytest.raises(ModelFormatError):
        cls.from_bytes(data[:-9])
    other = KNN if cls is LOF else LOF
    with pytest.raises(ModelFormatError, match="is not a"):
        other.from_bytes(data)


def test_isolation_forest_format_still_round_trips():
    # _format's framing is now shared; the forest's bytes must read back as before.
    X, _ = load("cardio")
    f = pynomaly.IsolationForest(n_estimators=20, random_state=0).fit(X)
    back = pynomaly.IsolationForest.from_bytes(f.to_bytes())
    np.testing.assert_array_equal(back.decision_function(X), f.decision_function(X))
    with pytest.raises(ModelFormatError, match="isolation forest"):
        pynomaly.IsolationForest.from_bytes(LOF().fit(X).to_bytes())


def test_sklearn_parameter_api():
    from sklearn.base import clone

    m = LOF(n_neighbors=5, novelty=True)
    c = clone(m)
    assert c.get_params() == m.get_params() and c is not m
    assert KNN().set_params(method="median").method == "median"


@pytest.mark.parametrize("cls", [LOF, KNN])
def test_bad_input_raises_clear_errors(cls):
    X = np.random.default_rng(0).standard_normal((30, 4))
    kw = {"novelty": True} if cls is LOF else {}
    with pytest.raises(NotFittedError, match="not fitted"):
        cls(**kw).decision_function(X)
    with pytest.raises(NotFittedError):
        cls().to_bytes()
    with pytest.raises(InvalidInputError, match="n_samples=1"):
        cls().fit(X[:1])
    with pytest.raises(InvalidInputError, match="at least 1"):
        cls(n_neighbors=0).fit(X)
    with pytest.raises(InvalidInputError, match="positive integer"):
        cls(n_neighbors=2.0).fit(X)
    with pytest.raises(InvalidInputError, match="contamination"):
        cls(contamination=0.7).fit(X)
    with pytest.raises(InvalidInputError, match="metric"):
        cls(metric="chebyshev").fit(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        cls().fit(bad)
    with pytest.raises(InvalidInputError, match="0 rows"):
        cls().fit(X[:0])
    m = cls(n_neighbors=3, **kw).fit(X)
    with pytest.raises(InvalidInputError, match="is expecting 4 features as input"):
        m.decision_function(X[:, :3])
    with pytest.raises(InvalidInputError, match="infinity"):
        m.decision_function(np.full((2, 4), np.inf))
    if cls is KNN:
        with pytest.raises(InvalidInputError, match="method"):
            KNN(method="max").fit(X)
    else:
        with pytest.raises(InvalidInputError, match="novelty"):
            LOF(novelty="yes").fit(X)


@pytest.mark.parametrize("d", [8, 32])
def test_lof_on_several_bands_of_the_self_join_equals_sklearn(d):
    # Enough rows for many band pairs of the self-join (1024 rows a band at d = 8, 256 at d = 32),
    # so that most neighbours arrive through the transposed side of a tile.
    X = np.random.default_rng(d).standard_normal((6000, d))
    expected = -sklearn_lof(X, 20).negative_outlier_factor_
    base = LOF(n_jobs=1, algorithm="brute").fit(X).decision_scores_
    np.testing.assert_allclose(base, expected, rtol=1e-9)
    np.testing.assert_array_equal(LOF(n_jobs=3, algorithm="brute").fit(X).decision_scores_, base)


# -- n_neighbors capped, duplicates, contamination="auto" (scikit-learn's behaviour) --------------
@pytest.mark.parametrize("n_neighbors", [29, 30, 200])
def test_n_neighbors_at_or_above_the_rows_is_capped_with_a_warning(n_neighbors):
    from sklearn.neighbors import LocalOutlierFactor
    from pyod.models.knn import KNN as PyODKNN

    X = np.random.default_rng(0).standard_normal((30, 4))
    if n_neighbors >= 30:
        with pytest.warns(UserWarning, match=rf"n_neighbors \({n_neighbors}\) is greater than or equal to the total "
                                             r"number of samples \(30\)\. n_neighbors will be set to \(n_samples - 1\)"):
            lof = LOF(n_neighbors=n_neighbors).fit(X)
        with pytest.warns(UserWarning, match="n_neighbors will be set"):
            knn = KNN(n_neighbors=n_neighbors).fit(X)
    else:
        lof, knn = LOF(n_neighbors=n_neighbors).fit(X), KNN(n_neighbors=n_neighbors).fit(X)
    assert lof.n_neighbors_ == knn.n_neighbors_ == 29
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scikit-learn's own capping warning, above 30
        ref = LocalOutlierFactor(n_neighbors=n_neighbors).fit(X)
    np.testing.assert_allclose(lof.decision_scores_, -ref.negative_outlier_factor_, rtol=1e-12)
    np.testing.assert_allclose(knn.decision_scores_, PyODKNN(n_neighbors=29).fit(X).decision_scores_, rtol=1e-12)
    # New rows are scored with the same k, also after a round trip through bytes.
    novel = LOF(n_neighbors=29, novelty=True).fit(X)
    with pytest.warns(UserWarning, match="n_neighbors will be set"):
        capped = LOF(n_neighbors=n_neighbors + 1, novelty=True).fit(X)
    Y = X[:5] + 0.1
    np.testing.assert_array_equal(LOF.from_bytes(capped.to_bytes()).decision_function(Y), novel.decision_function(Y))
    np.testing.assert_array_equal(KNN.from_bytes(knn.to_bytes()).decision_function(Y), knn.decision_function(Y))


def test_lof_warns_about_duplicates_as_scikit_learn_does():
    from sklearn.neighbors import LocalOutlierFactor

    rng = np.random.default_rng(0)
    X = np.vstack([np.repeat(rng.standard_normal((4, 2)), 10, axis=0), rng.standard_normal((20, 2))])
    msg = "Duplicate values are leading to incorrect results. Increase the number of neighbors"
    with pytest.warns(UserWarning, match=msg):
        LocalOutlierFactor(n_neighbors=5).fit(X)
    with pytest.warns(UserWarning, match=msg):
        LOF(n_neighbors=5).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LOF(n_neighbors=15).fit(X)  # more neighbours than copies: no warning
        LOF(n_neighbors=5, novelty=True).fit(X)  # as scikit-learn: only outlier detection warns


@pytest.mark.parametrize("name", ["glass", "cardio", "thyroid"])
def test_lof_contamination_auto_labels_equal_scikit_learn(name):
    from sklearn.neighbors import LocalOutlierFactor

    X, _ = load(name)
    ref = LocalOutlierFactor(n_neighbors=20, contamination="auto")
    ref_labels = ref.fit_predict(X)
    m = LOF(n_neighbors=20, contamination="auto").fit(X)
    assert m.threshold_ == 1.5 == -ref.offset_
    assert 0 < m.labels_.sum() < len(X)
    np.testing.assert_array_equal(m.labels_, (ref_labels == -1).astype(np.int64))
    novel = LOF(n_neighbors=20, contamination="auto", novelty=True).fit(X[::2])
    ref_novel = LocalOutlierFactor(n_neighbors=20, contamination="auto", novelty=True).fit(X[::2])
    np.testing.assert_array_equal(novel.predict(X[1::2]), (ref_novel.predict(X[1::2]) == -1).astype(np.int64))
    # Confidence follows PyOD's rule for a threshold not drawn from a rate: the labelled share.
    assert novel.predict_confidence(X[1::2]).shape == (len(X[1::2]),)
    back = LOF.from_bytes(novel.to_bytes())
    assert back.contamination == "auto" and back.threshold_ == 1.5


def test_knn_refuses_contamination_auto():
    X = np.random.default_rng(0).standard_normal((30, 4))
    with pytest.raises(InvalidInputError, match="contamination='auto' is not defined for KNN"):
        KNN(contamination="auto").fit(X)
    m = KNN().fit(X)
    with pytest.raises(InvalidInputError, match="contamination='auto' is not defined for KNN"):
        m.contamination = "auto"
    assert m.contamination == 0.1
