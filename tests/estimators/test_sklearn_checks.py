"""scikit-learn's own estimator checks (``sklearn.utils.estimator_checks``) on every native
detector, and the meta-estimators users combine them with: Pipeline, GridSearchCV,
cross_val_score, clone, is_outlier_detector.

Each check a detector fails on purpose is listed with its reason; ``xfail_strict`` makes a
listed check that starts passing fail the suite, so the list stays exact.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone, is_outlier_detector  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from pynomaly import KNN, LOF, InvalidInputError, IsolationForest  # noqa: E402

# PyOD's labels (0 inlier, 1 outlier), not scikit-learn's (+1 inlier, -1 outlier).
_LABELS = "predict and fit_predict return 0/1 labels following PyOD, not scikit-learn's +1/-1"
# pynomaly.NotFittedError is pynomaly's own (a ValueError and AttributeError, as
# scikit-learn's): subclassing scikit-learn's would make scikit-learn a core dependency.
_NOT_FITTED = "unfitted calls raise pynomaly.NotFittedError, not sklearn.exceptions.NotFittedError"
COMMON = {
    "check_estimators_unfitted": _NOT_FITTED,
    "check_outliers_fit_predict": _LABELS,
    "check_outliers_train": _LABELS,
}
# LOF(novelty=False) refuses to score new rows with an InvalidInputError saying why;
# scikit-learn's LocalOutlierFactor hides predict/decision_function instead, so these checks,
# which call them after fit, do not run them on it.
_OUTLIER_MODE = "LOF(novelty=False) refuses predict/decision_function on new data (InvalidInputError)"
LOF_OUTLIER_MODE = {
    **COMMON,
    **{name: _OUTLIER_MODE for name in (
        "check_n_features_in_after_fitting", "check_estimators_dtypes", "check_dtype_object",
        "check_estimators_nan_inf", "check_estimators_pickle", "check_f_contiguous_array_estimator",
        "check_outliers_train", "check_classifier_data_not_an_array", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_dict_unchanged", "check_fit_idempotent",
        "check_fit2d_predict1d",
    )},
}

DETECTORS = [
    (IsolationForest(n_estimators=20, random_state=0), COMMON),
    (LOF(n_neighbors=5, novelty=True), COMMON),
    (LOF(n_neighbors=5), LOF_OUTLIER_MODE),
    (KNN(n_neighbors=5), COMMON),
]
_BY_ID = {id(est): failures for est, failures in DETECTORS}

with warnings.catch_warnings():
    # "does not inherit from sklearn.base.BaseEstimator": on purpose, scikit-learn is optional.
    warnings.filterwarnings("ignore", message="Estimator .* does not inherit from", category=UserWarning)
    _CHECKS = parametrize_with_checks(
        [est for est, _ in DETECTORS], expected_failed_checks=lambda est: _BY_ID[id(est)]
    )


@_CHECKS
@pytest.mark.filterwarnings("ignore:Estimator .* does not inherit from:UserWarning")
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# -- the meta-estimators users reach for ---------------------------------------------------------
def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    # 5% planted outliers, scattered (a tight cluster of them would be normal to LOF)
    X[:15] = rng.choice([-1, 1], size=(15, 4)) * rng.uniform(5, 9, size=(15, 4))
    y = np.zeros(300, dtype=np.int64)
    y[:15] = 1
    return X, y


ESTIMATORS = [IsolationForest(n_estimators=30, random_state=0), LOF(n_neighbors=10, novelty=True), KNN()]


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_meta_estimators_accept_every_detector(est):
    X, y = _data()
    assert is_outlier_detector(est)
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()

    pipe = Pipeline([("scale", StandardScaler()), ("detect", est)]).fit(X)
    labels = pipe.predict(X)
    assert set(np.unique(labels)) <= {0, 1}
    scaled = StandardScaler().fit_transform(X)
    np.testing.assert_array_equal(labels, clone(est).fit(scaled).predict(scaled))

    # 0/1 labels against the planted outliers: any classification scorer works on them.
    cv = KFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(est, X, y, scoring="f1", cv=cv)
    assert scores.shape == (3,) and np.all(scores > 0.5)
    grid = {"contamination": [0.05, 0.2]}
    search = GridSearchCV(est, grid, scoring="f1", cv=cv).fit(X, y)
    assert search.best_params_ == {"contamination": 0.05}


def test_import_pynomaly_does_not_import_sklearn():
    import subprocess

    code = "import sys, pynomaly; pynomaly.IsolationForest(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- feature names (feature_names_in_) -----------------------------------------------------------
def _members():
    from pynomaly.estimators.combine import Ensemble

    return [
        IsolationForest(n_estimators=20, random_state=0),
        LOF(n_neighbors=10, novelty=True),
        KNN(),
        Ensemble([KNN(), IsolationForest(n_estimators=10, random_state=0)]),
    ]


@pytest.mark.parametrize("est", _members(), ids=lambda e: type(e).__name__)
def test_feature_names_are_recorded_and_columns_taken_by_name(est):
    pd = pytest.importorskip("pandas")
    X, _ = _data()
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    est.fit(df)
    assert list(est.feature_names_in_) == ["a", "b", "c", "d"]
    want = est.decision_function(X)
    np.testing.assert_array_equal(est.decision_function(df), want)
    # The same columns in another order are put back in the fitted order, not read by position.
    np.testing.assert_array_equal(est.decision_function(df[["d", "b", "a", "c"]]), want)
    np.testing.assert_array_equal(est.predict(df[["c", "a", "d", "b"]]), est.predict(X))
    with pytest.raises(InvalidInputError, match=r"missing \['d'\]"):
        est.decision_function(df[["a", "b", "c"]])
    with pytest.raises(InvalidInputError, match=r"missing \['d'\]; not seen at fit \['e'\]"):
        est.decision_function(df.rename(columns={"d": "e"}))
    with pytest.raises(InvalidInputError, match="is expecting 4 features"):
        est.decision_function(X[:, :3])
    # Fitted again without names, none are kept.
    est.fit(X)
    assert not hasattr(est, "feature_names_in_")
    np.testing.assert_array_equal(est.decision_function(df), est.decision_function(X))


@pytest.mark.parametrize("cls", [IsolationForest, LOF, KNN])
def test_feature_names_survive_to_bytes_and_pickle(cls):
    import pickle

    pd = pytest.importorskip("pandas")
    X, _ = _data()
    kw = {"novelty": True} if cls is LOF else {}
    df = pd.DataFrame(X, columns=["w", "x", "y", "z"])
    m = cls(**kw).fit(df)
    for back in (cls.from_bytes(m.to_bytes()), pickle.loads(pickle.dumps(m))):
        assert list(back.feature_names_in_) == ["w", "x", "y", "z"]
        np.testing.assert_array_equal(back.decision_function(df[["z", "y", "x", "w"]]), m.decision_function(X))
    # A model fitted on an array (as every file written before names were kept) has none.
    assert not hasattr(cls.from_bytes(cls(**kw).fit(X).to_bytes()), "feature_names_in_")


# -- inputs scikit-learn accepts or refuses with a precise message --------------------------------
@pytest.mark.parametrize("cls", [IsolationForest, LOF, KNN])
def test_object_and_nullable_numeric_input_is_converted(cls):
    pd = pytest.importorskip("pandas")
    X, _ = _data()
    kw = {"novelty": True} if cls is LOF else {"random_state": 0} if cls is IsolationForest else {}
    want = cls(**kw).fit(X)
    ref = want.decision_function(X)
    np.testing.assert_array_equal(cls(**kw).fit(X.astype(object)).decision_function(X.astype(object)), ref)
    nullable = pd.DataFrame(X, columns=list("abcd")).astype("Float64")
    np.testing.assert_array_equal(cls(**kw).fit(nullable).decision_function(nullable), ref)
    ints = np.round(X * 100).astype(np.int64)
    ref_int = cls(**kw).fit(ints).decision_function(ints)
    np.testing.assert_array_equal(want.fit(pd.DataFrame(ints).astype("Int64")).decision_function(ints), ref_int)
    with_na = nullable.copy()
    with_na.iloc[7, 2] = pd.NA
    with pytest.raises(InvalidInputError, match="NaN at row 7, column 2"):
        cls(**kw).fit(with_na)
    bad = X.astype(object)
    bad[3, 1] = "x"
    with pytest.raises(InvalidInputError, match="dtype object with a value that is not a number"):
        cls(**kw).fit(bad)


@pytest.mark.parametrize("cls", [IsolationForest, LOF, KNN])
def test_sparse_and_complex_input_are_refused_saying_so(cls):
    sparse = pytest.importorskip("scipy.sparse")
    X, _ = _data()
    kw = {"novelty": True} if cls is LOF else {}
    for S in (sparse.csr_matrix(X), sparse.csr_array(X), sparse.coo_matrix(X)):
        with pytest.raises(InvalidInputError, match=r"sparse input is not supported, pass X\.toarray\(\)"):
            cls(**kw).fit(S)
    m = cls(**kw).fit(X)
    with pytest.raises(InvalidInputError, match=r"sparse input is not supported, pass X\.toarray\(\)"):
        m.decision_function(sparse.csr_matrix(X))
    with pytest.raises(InvalidInputError, match="Complex data not supported"):
        m.decision_function(X + 1j)
