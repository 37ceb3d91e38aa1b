"""IsolationForest's scoring kernels: the same forest for any n_jobs, every SIMD target and
every block kernel (each forced in turn) equal to the reference walk and to a NumPy walk of the
node arrays, bit for bit, and the PYNOMALY_SIMD override."""

from __future__ import annotations

import numpy as np
import pytest

import pynomaly
from pynomaly import InvalidInputError, IsolationForest

from conftest import SIMD_TARGETS, blobs as _blobs, load_dataset

sklearn_ensemble = pytest.importorskip("sklearn.ensemble")


# -- determinism and SIMD targets -------------------------------------------------------------
@pytest.mark.parametrize("name", ["shuttle", "cardio", "musk"])
def test_same_seed_same_forest_for_any_n_jobs(name):
    X, _ = load_dataset(name)
    a = IsolationForest(random_state=7, n_jobs=1).fit(X)
    b = IsolationForest(random_state=7, n_jobs=2).fit(X)
    np.testing.assert_array_equal(a.decision_scores_, b.decision_scores_)
    for k, v in a._forest.arrays().items():
        np.testing.assert_array_equal(v, b._forest.arrays()[k], err_msg=k)
    np.testing.assert_array_equal(a.decision_function(X[::3]), b.decision_function(X[::3]))


def test_different_seeds_differ():
    X = _blobs()
    a = IsolationForest(random_state=1).fit(X).decision_scores_
    b = IsolationForest(random_state=2).fit(X).decision_scores_
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("simd_target", SIMD_TARGETS, indirect=True)
@pytest.mark.parametrize("name", ["satellite", "mnist", "shuttle", "glass"])
def test_every_simd_target_gives_baseline_scores(simd_target, name):
    X, _ = load_dataset(name)
    m = IsolationForest(random_state=0).fit(X)
    sk = sklearn_ensemble.IsolationForest(random_state=0, max_samples=0.5, n_estimators=10).fit(X[:4000])
    got = [m.decision_function(X), IsolationForest.from_sklearn(sk).decision_function(X)]
    pynomaly._core.set_simd("baseline")
    want = [m.decision_function(X), IsolationForest.from_sklearn(sk).decision_function(X)]
    pynomaly._core.set_simd(simd_target)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)


def test_simd_environment_variable_forces_target(tmp_path):
    import subprocess
    import sys

    for target in SIMD_TARGETS:
        out = subprocess.run(
            [sys.executable, "-c", "import pynomaly; print(pynomaly.build_info()['simd'])"],
            env={**__import__("os").environ, "PYNOMALY_SIMD": target},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == target
    # The core applies the variable when it loads (lazily since issue 21: a socket client never
    # loads it), whichever module loads it first.
    bad = subprocess.run(
        [sys.executable, "-c", "import pynomaly; pynomaly.IsolationForest"],
        env={**__import__("os").environ, "PYNOMALY_SIMD": "sse9"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "PYNOMALY_SIMD" in bad.stderr


def test_build_info():
    info = pynomaly.build_info()
    assert info["simd"] in info["simd_supported"]
    assert info["simd_supported"][0] == "baseline"
    assert isinstance(info["openmp"], bool) and info["compiler"]
    # the isolation forest's kernel and why it was chosen (calibration or the only candidate)
    assert info["iforest_kernel"] in info["iforest_kernels"]
    assert info["iforest_kernel_reason"].startswith(f"{info['simd']} ISA: {info['iforest_kernel']} iforest kernel")
    assert info["iforest_kernel_forced"] == ""


def test_build_info_kernel_follows_simd_override():
    import os
    import subprocess
    import sys

    code = "import pynomaly; i = pynomaly.build_info(); print(i['simd'], i['iforest_kernel'])"
    for target in SIMD_TARGETS:
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYNOMALY_SIMD": target},
                             capture_output=True, text=True, check=True)
        simd, kernel = out.stdout.split()
        assert simd == target
        if target == "baseline":
            assert kernel == "portable"  # the only kernel without SIMD: no calibration


# -- every iforest kernel, each forced in turn, against the reference walk ---------------------
# The block kernels the best target can run (few-rows is the single-row path); "reference" walks
# the defining node arrays one node at a time and is what every other kernel must equal bit for bit.
IFOREST_KERNELS = [k for k in pynomaly.build_info()["iforest_kernels"] if k != "reference"]


@pytest.fixture
def iforest_kernel(request):
    pynomaly._core.set_iforest_kernel(request.param)
    yield request.param
    pynomaly._core.set_iforest_kernel("auto")


def _tricky_rows(n, d, seed):
    """Gaussian rows with ties, exact zeros of both signs and values on the training grid, so
    that x == threshold, -0.0 against +0.0 and negative keys all occur."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[:, 0] = np.round(X[:, 0] * 2) / 2  # few distinct values: x often equals a threshold
    X[rng.random(n) < 0.2, 1] = 0.0
    X[rng.random(n) < 0.2, 1] = -0.0
    X[:, 2] = -np.abs(X[:, 2])  # negative only
    return X


def _path_sums(forest, X, kernel, n_jobs=1):
    pynomaly._core.set_iforest_kernel(kernel)
    try:
        return forest.path_length_sum(X, n_jobs)
    finally:
        pynomaly._core.set_iforest_kernel("auto")


@pytest.mark.parametrize("iforest_kernel", IFOREST_KERNELS, indirect=True)
@pytest.mark.parametrize("max_samples", [2, 3, 5, 9, 17, 33, 65, 129, 256, 513, 1025, 2049, 4096])
def test_every_kernel_equals_reference_at_every_depth(iforest_kernel, max_samples):
    X = _tricky_rows(4200, 5, max_samples)
    f = pynomaly._core.Forest.train(X, 7, max_samples, 0, max_samples, 1)
    assert f.depth == int(np.ceil(np.log2(max_samples))) and f.layout == "complete"
    Y = _tricky_rows(1100, 5, 1000 + max_samples)
    want = _path_sums(f, Y, "reference")
    pynomaly._core.set_iforest_kernel(iforest_kernel)
    np.testing.assert_array_equal(f.path_length_sum(Y), want)
    # odd counts, fewer rows than a 16-row group, not a multiple of a block, single rows, and
    # a row range that starts mid-array (no alignment)
    for n in (1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 511, 513, 1025):
        np.testing.assert_array_equal(f.path_length_sum(Y[:n]), want[:n], err_msg=f"n={n}")
    np.testing.assert_array_equal(f.path_length_sum(Y[37:38]), want[37:38])
    np.testing.assert_array_equal(f.path_length_sum(Y[5:1000:3]), want[5:1000:3])
    # threads: the same bits
    np.testing.assert_array_equal(f.path_length_sum(Y, 2), want)


def _random_forest(depth, n_trees, d, values, seed):
    """Trees built node by node (as an imported forest would be), BFS order, leaves anywhere
    from level 1 to `depth`, thresholds drawn from `values` (signed zeros and infinities
    included), leaf values with full mantissas so that any change of summation order shows."""
    rng = np.random.default_rng(seed)
    offs, feat, thr, left, leaf = [0], [], [], [], []
    for t in range(n_trees):
        levels = [0]
        i = 0
        while i < len(levels):
            lvl = levels[i]
            inner = lvl < depth and (lvl == 0 or t == 0 or rng.random() > 0.15)  # tree 0 is complete
            if inner:
                feat.append(int(rng.integers(d)))
                thr.append(float(rng.choice(values)))
                left.append(len(levels))
                leaf.append(0.0)
                levels += [lvl + 1, lvl + 1]
            else:
                feat.append(-1)
                thr.append(0.0)
                left.append(0)
                leaf.append(float(rng.uniform(0, 20)))
            i += 1
        offs.append(len(feat))
    a = lambda v, t: np.asarray(v, dtype=t)  # noqa: E731
    return pynomaly._core.Forest(d, 256, a(offs, np.int32), a(feat, np.int32), a(thr, np.float32),
                                 a(left, np.int32), a(leaf, np.float64))


@pytest.mark.parametrize("iforest_kernel", IFOREST_KERNELS, indirect=True)
@pytest.mark.parametrize("depth", range(1, 13))
def test_every_kernel_equals_reference_on_signed_zeros_and_ties(iforest_kernel, depth):
    values = np.array([-0.0, 0.0, -1.0, 1.0, -2.5, 2.5, 1e-40, -1e-40, np.inf, -np.inf, 3e38, -3e38])
    f = _random_forest(depth, 9, 3, values, depth)
    assert f.depth == depth and f.layout == "complete"
    rng = np.random.default_rng(depth)
    Y = rng.choice(values[np.isfinite(values)], size=(301, 3))
    pynomaly._core.set_iforest_kernel("auto")
    want = _path_sums(f, Y, "reference")
    pynomaly._core.set_iforest_kernel(iforest_kernel)
    np.testing.assert_array_equal(f.path_length_sum(Y), want)
    for n in (1, 5, 16, 17):
        np.testing.assert_array_equal(f.path_length_sum(Y[:n]), want[:n])


@pytest.mark.parametrize("iforest_kernel", IFOREST_KERNELS, indirect=True)
def test_every_kernel_equals_reference_on_imported_sklearn_forests(iforest_kernel):
    # float64 thresholds rounded down to float32, unbalanced trees padded in the layout
    X = _tricky_rows(3000, 6, 5)
    sk = sklearn_ensemble.IsolationForest(n_estimators=13, max_samples=700, random_state=0).fit(X)
    f = IsolationForest.from_sklearn(sk)._forest
    Y = _tricky_rows(777, 6, 6)
    got = f.path_length_sum(Y)
    np.testing.assert_array_equal(got, _path_sums(f, Y, "reference"))
    np.testing.assert_allclose(IsolationForest.from_sklearn(sk).decision_function(Y), -sk.score_samples(Y),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("iforest_kernel", IFOREST_KERNELS, indirect=True)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_every_kernel_rejects_non_finite_rows(iforest_kernel, bad):
    X = _blobs(2000, 4)
    m = IsolationForest(n_estimators=10, random_state=0).fit(X)
    for n, r in ((1, 0), (40, 33)):
        Y = X[:n].copy()
        Y[r, 2] = bad
        with pytest.raises(InvalidInputError, match=f"row {r}, column 2"):
            m.decision_function(Y)


def test_forcing_unknown_or_unsupported_kernel_is_an_error():
    with pytest.raises(InvalidInputError, match="unknown iforest kernel 'nope'; this target runs: auto, "):
        pynomaly._core.set_iforest_kernel("nope")
    assert pynomaly.build_info()["iforest_kernel_forced"] == ""
    if "avx512" not in SIMD_TARGETS:
        with pytest.raises(InvalidInputError, match="needs SIMD target 'avx512'"):
            pynomaly._core.set_iforest_kernel("avx512-gather")


def test_forced_kernel_above_a_lowered_target_falls_back_to_the_targets_choice():
    if len(SIMD_TARGETS) < 2:
        pytest.skip("one SIMD target on this CPU")
    X = _tricky_rows(500, 4, 1)
    f = pynomaly._core.Forest.train(X, 5, 256, 0, 1, 1)
    want = _path_sums(f, X, "reference")
    best = pynomaly.build_info()["simd_best"]
    simd_kernel = next(k for k in IFOREST_KERNELS if k.startswith(best))
    pynomaly._core.set_iforest_kernel(simd_kernel)
    try:
        pynomaly._core.set_simd("baseline")
        assert pynomaly.build_info()["iforest_kernel"] == "portable"
        np.testing.assert_array_equal(f.path_length_sum(X), want)
    finally:
        pynomaly._core.set_simd(best)
        pynomaly._core.set_iforest_kernel("auto")


def _numpy_path_length_sum(forest, X):
    """Plain NumPy reference: walk the defining node arrays, all rows of a tree at once."""
    a = forest.arrays()
    x32 = X.astype(np.float32)
    total = np.zeros(len(X))
    for t in range(forest.n_trees):
        lo, hi = a["tree_offset"][t], a["tree_offset"][t + 1]
        feat, thr, left, leaf = (a[k][lo:hi] for k in ("feature", "threshold", "left", "leaf_value"))
        node = np.zeros(len(X), dtype=np.int64)
        while True:
            inner = feat[node] >= 0
            if not inner.any():
                break
            rows = np.flatnonzero(inner)
            n = node[rows]
            go_right = x32[rows, feat[n]] > thr[n]
            node[rows] = left[n] + go_right
        total += leaf[node]
    return total


@pytest.mark.parametrize("simd_target", SIMD_TARGETS, indirect=True)
@pytest.mark.parametrize("max_samples", [2, 3, 5, 9, 17, 33, 65, 129, 256, 1000, 3000, 5000])
def test_kernels_equal_numpy_reference_for_every_depth(simd_target, max_samples):
    X, _ = load_dataset("pendigits")  # 6870 x 16
    m = IsolationForest(n_estimators=23, max_samples=max_samples, random_state=max_samples).fit(X)
    f = m._forest
    assert f.layout == ("complete" if f.depth <= 12 else "sparse")
    ref = _numpy_path_length_sum(f, X)
    np.testing.assert_allclose(f.path_length_sum(X), ref, rtol=1e-13, atol=0)
    # a handful of rows takes the few-rows path; it must agree bit for bit with the block path
    block = f.path_length_sum(X[:100])
    for n in (1, 3, 15, 16, 17):
        np.testing.assert_array_equal(f.path_length_sum(X[:n]), block[:n])


def test_a_simd_target_this_cpu_cannot_run_is_ignored_with_a_warning():
    """PYNOMALY_SIMD naming a real target the CPU lacks: the core warns as it loads and keeps
    the best one it can run (the variable is applied by the core, not by `import pynomaly`)."""
    import os
    import subprocess
    import sys

    missing = [t for t in ("avx512", "avx2", "neon") if t not in SIMD_TARGETS]
    if not missing:
        pytest.skip("this CPU runs every SIMD target")
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import pynomaly; print(pynomaly.build_info()['simd'])"],
        env={**os.environ, "PYNOMALY_SIMD": missing[0]}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == pynomaly.build_info()["simd_best"]
    assert f"PYNOMALY_SIMD='{missing[0]}' ignored" in out.stderr and "RuntimeWarning" in out.stderr
