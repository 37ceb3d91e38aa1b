"""pynomaly.knn against an exact NumPy reference (same float64 arithmetic, so equality is exact)
and against scikit-learn, on real data; every SIMD target; threads; bad input; Ctrl-C."""

from __future__ import annotations

import _thread
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pynomaly
from pynomaly import InvalidInputError, _core

REPO = Path(__file__).resolve().parents[2]
DATASETS = Path(os.environ.get("PYNOMALY_DATASETS", REPO.parent / "shared" / "datasets"))

# Quick enough for the exact reference on a sample of queries; smtp is cut to its first rows
# (it is 25% duplicates, which is the point of including it).
SMALL = ["glass", "wbc", "ionosphere", "breastw", "pima", "vowels", "letter", "cardio", "cardiotocography",
         "musk", "thyroid", "optdigits", "satimage_2", "satellite", "landsat", "pendigits", "annthyroid",
         "mnist", "mammography", "smtp"]
SIMD = list(_core.build_info()["simd_supported"])


def load(name: str, max_rows: int = 12000) -> np.ndarray:
    path = DATASETS / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"dataset {path} not found (set PYNOMALY_DATASETS)")
    with np.load(path) as f:
        return np.asarray(f["X"][:max_rows], dtype=np.float64)


@pytest.fixture
def simd_target(request):
    before = _core.build_info()["simd"]
    _core.set_simd(request.param)
    yield request.param
    _core.set_simd(before)


def reference(X, Q, k, metric, self_query):
    """k nearest by (key, index) with the core's float64 arithmetic: features summed in order."""
    X = np.asarray(X, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    n, d = X.shape
    if metric == "cosine":
        nx = np.sqrt(sum(X[:, j] * X[:, j] for j in range(d)))
    out_d, out_i = [], []
    for qi, q in enumerate(Q):
        if metric in ("euclidean", "sqeuclidean"):
            key = np.zeros(n)
            for j in range(d):
                t = q[j] - X[:, j]
                key += t * t
        elif metric == "manhattan":
            key = np.zeros(n)
            for j in range(d):
                key += np.abs(q[j] - X[:, j])
        else:
            dot = np.zeros(n)
            sq = 0.0
            for j in range(d):
                dot += q[j] * X[:, j]
                sq += q[j] * q[j]
            nq = np.sqrt(sq)
            with np.errstate(divide="ignore", invalid="ignore"):
                key = np.clip(1.0 - dot / (nq * nx), 0.0, 2.0)
            key[(nx == 0) | (nq == 0)] = 1.0
        idx = np.arange(n)
        if self_query is not None:
            keep = idx != self_query[qi]
            key, idx = key[keep], idx[keep]
        order = np.lexsort((idx, key))[:k]
        dist = np.sqrt(key[order]) if metric == "euclidean" else key[order]
        out_d.append(dist)
        out_i.append(idx[order])
    return np.array(out_d), np.array(out_i)


def check_rows(X, k, metric, algorithm, rows, Y=None, n_jobs=None):
    dist, idx = pynomaly.knn(X, k, Y=Y, metric=metric, algorithm=algorithm, n_jobs=n_jobs)
    Q = X if Y is None else Y
    rd, ri = reference(X, np.asarray(Q)[rows], k, metric, rows if Y is None else None)
    np.testing.assert_array_equal(idx[rows], ri)
    np.testing.assert_array_equal(dist[rows], rd)
    return dist, idx


@pytest.mark.parametrize("name", SMALL)
def test_real_data_equals_exact_reference_and_sklearn(name):
    from sklearn.neighbors import NearestNeighbors

    X = load(name)
    rows = np.random.default_rng(0).choice(len(X), size=min(len(X), 150), replace=False)
    k = 10
    algorithms = ["brute", "kd_tree"] if X.shape[1] <= 16 else ["brute"]
    for algorithm in algorithms:
        dist, idx = check_rows(X, k, "euclidean", algorithm, rows)
    # Meaning: the same sorted distances as scikit-learn's exact tree (ties may order differently).
    sk_alg = "kd_tree" if X.shape[1] <= 16 else "ball_tree"
    sd, _ = NearestNeighbors(n_neighbors=k, algorithm=sk_alg).fit(X).kneighbors()
    np.testing.assert_allclose(dist, sd, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("simd_target", SIMD, indirect=True)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "manhattan", "cosine"])
def test_every_metric_and_simd_target_is_exact(simd_target, metric):
    X = load("cardio")  # 1831 x 21, a few duplicates
    rows = np.arange(0, len(X), 13)
    check_rows(X, 7, metric, "brute", rows)
    Y = X[::5] + 0.01
    check_rows(X, 7, metric, "brute", np.arange(len(Y)), Y=Y)
    check_rows(X, 7, metric, "brute", np.arange(20), Y=Y[:20])  # few queries: data left unsorted
    if metric != "cosine":
        Xl = load("annthyroid")  # d = 6, many duplicates
        check_rows(Xl, 12, metric, "kd_tree", np.arange(0, len(Xl), 37))
        check_rows(Xl, 12, metric, "brute", np.arange(0, len(Xl), 37))


@pytest.mark.parametrize("simd_target", SIMD, indirect=True)
def test_precision_traps_are_exact(simd_target):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((400, 5))
    cases = {
        "far from origin": 1e6 + 1e-3 * base,
        "tiny scale": 1e-30 * base,
        "huge scale": 1e30 * base,
        "near duplicates": np.repeat(base[:40], 10, axis=0) + 1e-9 * rng.standard_normal((400, 5)),
        "one outlier": np.vstack([base, [[1e12] * 5]]),
        "integer grid": rng.integers(0, 3, size=(400, 5)).astype(float),
    }
    for name, X in cases.items():
        for algorithm in ("brute", "kd_tree"):
            check_rows(X, 9, "euclidean", algorithm, np.arange(len(X)))


def test_float32_and_any_layout_read_in_place():
    X = load("pendigits")[:3000]
    X32 = X.astype(np.float32)
    rows = np.arange(0, 3000, 17)
    d32, i32 = check_rows(X32, 8, "euclidean", "brute", rows)
    d64, i64 = pynomaly.knn(X32.astype(np.float64), 8, algorithm="brute")
    np.testing.assert_array_equal(d32, d64)
    np.testing.assert_array_equal(i32, i64)
    ref = pynomaly.knn(X, 8)
    np.testing.assert_array_equal(pynomaly.knn(np.asfortranarray(X), 8)[1], ref[1])
    Xs = np.zeros((3000, 2 * X.shape[1]))
    Xs[:, ::2] = X
    np.testing.assert_array_equal(pynomaly.knn(Xs[:, ::2], 8)[1], ref[1])  # a strided view


def test_results_do_not_depend_on_threads_or_algorithm():
    X = load("mammography")  # 30% duplicate rows: ties everywhere
    a = pynomaly.knn(X, 20, algorithm="brute", n_jobs=1)
    b = pynomaly.knn(X, 20, algorithm="brute", n_jobs=2)
    c = pynomaly.knn(X, 20, algorithm="kd_tree", n_jobs=2)
    d = pynomaly.knn(X, 20, algorithm="auto", n_jobs=-1)
    for other in (b, c, d):
        np.testing.assert_array_equal(a[0], other[0])
        np.testing.assert_array_equal(a[1], other[1])


def test_self_query_excludes_self_and_y_query_does_not():
    X = np.array([[0.0], [1.0], [1.0], [3.0]])
    dist, idx = pynomaly.knn(X, 2)
    np.testing.assert_array_equal(idx, [[1, 2], [2, 0], [1, 0], [1, 2]])
    np.testing.assert_array_equal(dist, [[1, 1], [0, 1], [0, 1], [2, 2]])
    dist, idx = pynomaly.knn(X, 2, Y=X)
    np.testing.assert_array_equal(idx, [[0, 1], [1, 2], [1, 2], [3, 1]])


def test_auto_choice_is_reported():
    from pynomaly.estimators.neighbors import choose_algorithm

    assert choose_algorithm(100000, 3) == "kd_tree"
    assert choose_algorithm(100000, 8) == "brute"
    assert choose_algorithm(100000, 64) == "brute"
    assert choose_algorithm(100000, 4, "cosine") == "brute"
    assert pynomaly.LOF().fit(load("glass")).algorithm_ in ("brute", "kd_tree")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda X: pynomaly.knn(X, 30), "at most 29"),
        (lambda X: pynomaly.knn(X, 31, Y=X), "at most 30"),
        (lambda X: pynomaly.knn(X, 0), "at least 1"),
        (lambda X: pynomaly.knn(X, 2.5), "positive integer"),
        (lambda X: pynomaly.knn(X, True), "positive integer"),
        (lambda X: pynomaly.knn(X, 3, Y=X[:, :2]), "same number of features"),
        (lambda X: pynomaly.knn(X, 3, metric="minkowski"), "metric must be one of"),
        (lambda X: pynomaly.knn(X, 3, algorithm="ball_tree"), "algorithm must be one of"),
        (lambda X: pynomaly.knn(X, 3, metric="cosine", algorithm="kd_tree"), "cosine"),
        (lambda X: pynomaly.knn(X[:0], 3), "0 rows"),
        (lambda X: pynomaly.knn(X[:, :0], 3), "0 feature"),
        (lambda X: pynomaly.knn(X[0], 3), "2-dimensional"),
        (lambda X: pynomaly.knn(X, 3, n_jobs=0), "n_jobs"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    X = np.random.default_rng(0).standard_normal((30, 3))
    with pytest.raises(InvalidInputError, match=message):
        call(X)


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity"), (1e200, "1e150")])
@pytest.mark.parametrize("where", ["X", "Y"])
def test_non_finite_values_are_rejected(bad, word, where):
    X = np.random.default_rng(0).standard_normal((50, 3))
    Y = X.copy()
    (X if where == "X" else Y)[7, 2] = bad
    with pytest.raises(InvalidInputError, match=word) as e:
        pynomaly.knn(X, 3, Y=Y if where == "Y" else None)
    assert "row 7, column 2" in str(e.value) and str(e.value).startswith(where)


def test_ctrl_c_stops_a_long_search(ctrl_c):
    X = np.random.default_rng(0).standard_normal((150_000, 64)).astype(np.float32)
    timer = threading.Timer(0.5, _thread.interrupt_main)
    start = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pynomaly.knn(X, 20, algorithm="brute", n_jobs=2)
    finally:
        timer.cancel()
    # The whole search takes tens of seconds; stopping must not wait for it.
    assert time.perf_counter() - start < 15.0
    # And the engine is usable afterwards.
    assert pynomaly.knn(X[:100], 3)[1].shape == (100, 3)


# ---- the brute-force self-join (cpp/knn.cpp, self_join_scan): each float32 tile is screened
# both ways, rows collect candidates from every band pair, ties switch rows to exact mode. -----


@pytest.mark.parametrize("name, max_rows", [("pendigits", 7000), ("satellite", 7000), ("shuttle", 9000),
                                            ("letter", 2000)])
@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_self_join_equals_query_path_on_real_data(name, max_rows, metric):
    """The self-join against the separate-query scan (screened one way only) on the same rows:
    without duplicate rows each row's nearest is itself at 0, then the self-join's k."""
    X = np.unique(load(name, max_rows), axis=0)  # several bands: 1024 rows at d = 9, 256 at d = 32+
    k = 15
    qd, qi = pynomaly.knn(X, k + 1, Y=X, metric=metric, algorithm="brute", n_jobs=2)
    np.testing.assert_array_equal(qi[:, 0], np.arange(len(X)))
    for n_jobs in (1, 2, 3):
        sd, si = pynomaly.knn(X, k, metric=metric, algorithm="brute", n_jobs=n_jobs)
        np.testing.assert_array_equal(si, qi[:, 1:])
        np.testing.assert_array_equal(sd, qd[:, 1:])


@pytest.mark.parametrize("simd_target", SIMD, indirect=True)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "manhattan", "cosine"])
def test_self_join_is_exact_across_bands_and_threads(simd_target, metric):
    """Gaussian rows over several bands (1024 rows at d = 8, 256 at d = 40) with duplicated rows
    scattered in: every row against the reference, the same bits for any n_jobs."""
    rng = np.random.default_rng(11)
    for n, d in [(3100, 8), (1100, 40)]:
        X = rng.standard_normal((n, d))
        X[rng.choice(n, 300, replace=False)] = X[rng.choice(n, 300, replace=False)]
        for k in (12, 80):  # the symmetric scan, and the one-way self-join past k = 64
            first = check_rows(X, k, metric, "brute", np.arange(0, n, 3), n_jobs=1)
            for n_jobs in (2, 3):
                dist, idx = pynomaly.knn(X, k, metric=metric, algorithm="brute", n_jobs=n_jobs)
                np.testing.assert_array_equal(dist, first[0])
                np.testing.assert_array_equal(idx, first[1])


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_self_join_heavy_ties_are_exact(n_jobs):
    """mammography has one row repeated 3329 times: those rows verify their candidates as they
    come (exact mode); the answer is the lowest indices among the copies, as the reference's."""
    X = load("mammography", 20000)
    u, inverse, counts = np.unique(X, axis=0, return_inverse=True, return_counts=True)
    big = np.flatnonzero(inverse.ravel() == np.argmax(counts))
    rows = np.concatenate([big[:40], big[-40:], np.arange(0, len(X), 97)])
    for k in (5, 20, 60):
        check_rows(X, k, "euclidean", "brute", rows, n_jobs=n_jobs)
    check_rows(X, 20, "manhattan", "brute", rows, n_jobs=n_jobs)
    check_rows(X, 100, "euclidean", "brute", rows, n_jobs=n_jobs)  # k > 64: the one-way self-join
    # Exact mode reads rows through copies when they are not float64 with unit stride.
    check_rows(np.asfortranarray(X.astype(np.float32)), 20, "euclidean", "brute", rows, n_jobs=n_jobs)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "manhattan", "cosine"])
@pytest.mark.parametrize("n, d", [(2, 1), (3, 2), (33, 4), (40, 3), (64, 8), (65, 8), (150, 5), (300, 3)])
def test_self_join_with_k_up_to_n_minus_1(metric, n, d):
    """k close to n: the spatial seed window (2k + 1 rows) is wider than the data (main before
    the self-join pass read past its buffers here and returned garbage indices); k > 64 takes
    the one-way self-join."""
    X = np.random.default_rng(n).standard_normal((n, d))
    for k in sorted({1, max(1, n // 2), n - 1}):
        check_rows(X, k, metric, "brute", np.arange(n))


def test_cosine_zero_rows_are_at_distance_one_from_everything():
    """A zero row is at cosine distance 1 from every row (scikit-learn's convention); with ties
    everywhere the lowest indices win, on the self-join and on separate queries."""
    rng = np.random.default_rng(5)
    X = rng.integers(0, 3, size=(2500, 3)).astype(np.float64)  # ~90 zero rows, many parallel rows
    X[::50] = 0.0
    check_rows(X, 30, "cosine", "brute", np.arange(len(X)), n_jobs=2)
    Y = np.vstack([np.zeros((3, 3)), X[:200]])
    check_rows(X, 30, "cosine", "brute", np.arange(len(Y)), Y=Y)
