"""Streaming detectors (issue 23): River's Half-Space Trees exactly, the Online Isolation
Forest's determinism and accuracy, the River-facing and array API, bad input, snapshots and
bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SIMD_TARGETS, dataset_params, load_dataset, roc_auc
from pynomaly import InvalidInputError, ModelFormatError
from pynomaly.stream import HalfSpaceTrees, OnlineIsolationForest

river = pytest.importorskip("river", reason="River is the reference for HalfSpaceTrees (the test extra)")
from river import anomaly, compose, preprocessing  # noqa: E402

# Windows of 50 and 64: records walk the trees four at a time between window swaps, and a
# window that is a multiple of four puts a swap right after such a block.
DETECTORS = [lambda: HalfSpaceTrees(seed=3, window_size=50), lambda: HalfSpaceTrees(seed=3, window_size=64, height=5),
             lambda: OnlineIsolationForest(seed=3, window_size=200)]


def scaled(name, n=None, seed=0):
    X, y = load_dataset(name)
    order = np.random.default_rng(seed).permutation(len(X))[:n]
    X, y = X[order], y[order]
    lo, hi = X.min(0), X.max(0)
    return (X - lo) / np.where(hi > lo, hi - lo, 1.0), y


def records(X):
    return [dict(enumerate(map(float, row))) for row in X]


def prequential(model, recs):
    out = []
    for x in recs:
        out.append(float(model.score_one(x)))
        model.learn_one(x)
    return np.array(out)


@pytest.mark.parametrize("name", dataset_params(["cardio", "thyroid", "pendigits"]))
@pytest.mark.parametrize("seed", [0, 7, 12345])
def test_same_seed_grows_rivers_trees_and_scores(name, seed):
    X, _ = scaled(name, 1200, seed)
    recs = records(X)
    ours, theirs = HalfSpaceTrees(seed=seed, window_size=100), anomaly.HalfSpaceTrees(seed=seed, window_size=100)
    a, b = prequential(ours, recs), prequential(theirs, recs)
    assert b[150:].std() > 0  # past several window swaps, scores vary
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(HalfSpaceTrees(seed=seed, window_size=100).score_learn_many(X), b)


@pytest.mark.parametrize("name", dataset_params(["cardio", "satellite"]))
@pytest.mark.parametrize("seed,taken_at", [(1, 0), (2, 60), (3, 333)])
def test_from_river_takes_over_and_stays_equal(name, seed, taken_at):
    """Before the first record, within the first window and after swaps; then both learn."""
    X, _ = scaled(name, 900, seed)
    recs = records(X)
    theirs = anomaly.HalfSpaceTrees(seed=seed, window_size=120, height=6, n_trees=7)
    prequential(theirs, recs[:taken_at])
    ours = HalfSpaceTrees.from_river(theirs)
    a, b = prequential(ours, recs[taken_at:]), prequential(theirs, recs[taken_at:])
    assert np.abs(a - b).max() <= 1e-12
    assert (b != 0).any()


def test_from_river_takes_limits_and_named_features():
    rng = np.random.default_rng(0)
    recs = [{"temp": float(v), "load": float(w)} for v, w in zip(rng.uniform(10, 30, 800), rng.uniform(0, 5, 800))]
    limits = {"temp": (10.0, 30.0), "load": (0.0, 5.0)}
    theirs = anomaly.HalfSpaceTrees(seed=5, window_size=64, limits=limits)
    prequential(theirs, recs[:100])
    ours = HalfSpaceTrees.from_river(theirs)
    assert ours.features_ == ("load", "temp")
    np.testing.assert_allclose(prequential(ours, recs[100:]), prequential(theirs, recs[100:]), rtol=0, atol=1e-12)


def test_drops_into_a_river_pipeline():
    X, _ = load_dataset("cardio")
    recs = [{f"f{j}": float(v) for j, v in enumerate(row)} for row in X[:700]]
    ours = compose.Pipeline(preprocessing.MinMaxScaler(), HalfSpaceTrees(seed=9, window_size=100))
    theirs = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=9, window_size=100))
    np.testing.assert_array_equal(prequential(ours, recs), prequential(theirs, recs))


@pytest.mark.parametrize("make", DETECTORS)
def test_any_batch_split_and_the_dict_loop_agree(make):
    X, _ = scaled("cardio", 1000)
    whole = make().score_learn_many(X)
    loop = prequential(make(), records(X))
    np.testing.assert_array_equal(whole, loop)
    m, parts = make(), []
    for cut in np.split(np.arange(len(X)), [1, 3, 64, 65, 400, 999]):
        parts.append(m.score_learn_many(X[cut]))
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    # learn_many then score_many: the same state as learning one by one
    a, b = make(), make()
    a.learn_many(X[:500])
    for x in records(X[:500]):
        b.learn_one(x)
    assert a.to_bytes() == b.to_bytes()
    np.testing.assert_array_equal(a.score_many(X[500:]), b.score_many(X[500:], n_jobs=2))


@pytest.mark.parametrize("make", DETECTORS)
def test_a_record_of_more_than_256_features_is_read_whole(make):
    # Records of up to 256 features are read into a buffer on the stack, wider ones on the heap.
    X = np.random.default_rng(1).random((120, 300))
    np.testing.assert_array_equal(prequential(make(), records(X)), make().score_learn_many(X))


@pytest.mark.parametrize("make", DETECTORS)
def test_snapshot_resumes_as_if_never_stopped(make):
    X, _ = scaled("thyroid", 1500)
    straight = make().score_learn_many(X)
    for stop in (0, 1, 333, 1000):
        m = make()
        head = m.score_learn_many(X[:stop]) if stop else np.empty(0)
        restored = type(m).from_bytes(m.to_bytes())
        assert restored.to_bytes() == m.to_bytes()
        np.testing.assert_array_equal(np.concatenate([head, restored.score_learn_many(X[stop:])]), straight)


def test_unstarted_half_space_trees_keep_the_seed_through_a_snapshot():
    X, _ = scaled("cardio", 400)
    m = HalfSpaceTrees(seed=None, window_size=50)
    m2 = HalfSpaceTrees.from_bytes(m.to_bytes())
    np.testing.assert_array_equal(m.score_learn_many(X), m2.score_learn_many(X))


@pytest.mark.parametrize("adaptive", [True, False])
def test_online_forest_agrees_with_a_plain_python_one(adaptive):
    """Growing, splitting on sampled points, forgetting and collapsing, record by record."""
    from _oif_reference import ReferenceOIF

    X, _ = scaled("thyroid", 700, seed=2)
    X[350:] = X[350:] * 0.3 + 0.7  # drift: the first half leaves the window
    ours = OnlineIsolationForest(n_trees=4, max_leaf_samples=4, window_size=150,
                                 growth="adaptive" if adaptive else "fixed", seed=11)
    ref = ReferenceOIF(4, 4, 150, adaptive, 11, X.shape[1])
    expected = []
    for x in X:
        expected.append(ref.score(x))
        ref.learn(x)
    np.testing.assert_allclose(ours.score_learn_many(X), expected, rtol=1e-13, atol=0)
    assert len(set(expected)) > 100


@pytest.mark.parametrize("simd_target", SIMD_TARGETS, indirect=True)
def test_half_space_trees_score_and_learn_the_same_bits_on_every_simd_target(simd_target):
    """The AVX-512 walk (16 walks a vector, four records a walk) gives the portable walk's
    scores and masses: tree counts that fill no vector, one, and more than one group of
    vectors, through window swaps."""
    from pynomaly import _core

    X, _ = scaled("pendigits", 1500, seed=6)
    for params in [dict(window_size=64), dict(n_trees=7, height=5, window_size=50),
                   dict(n_trees=21, height=9, window_size=100)]:
        ours = HalfSpaceTrees(seed=8, **params)
        got = ours.score_learn_many(X)
        _core.set_simd("baseline")
        try:
            portable = HalfSpaceTrees(seed=8, **params)
            want = portable.score_learn_many(X)
        finally:
            _core.set_simd(simd_target)
        assert np.unique(want).size > 100
        np.testing.assert_array_equal(got, want)
        assert ours.to_bytes() == portable.to_bytes()


@pytest.mark.parametrize("simd_target", SIMD_TARGETS, indirect=True)
def test_online_forest_learns_the_same_bits_on_every_simd_target(simd_target):
    """Widening a leaf's box and drawing a split's points eight lanes at a time (AVX-512) give
    the portable code's bits: the same scores and the same state, on widths that are and are
    not multiples of eight, through splits, forgetting and collapses."""
    from pynomaly import _core

    X, _ = scaled("cardio", 1200, seed=4)
    X[600:] = X[600:] * 0.5 + 0.5  # drift: the first half leaves the window, nodes collapse
    for cols, params in [(21, {}), (8, dict(window_size=300, max_leaf_samples=3)),
                         (3, dict(n_trees=11, window_size=100, max_leaf_samples=1, growth="fixed"))]:
        part = np.ascontiguousarray(X[:, :cols])
        ours = OnlineIsolationForest(seed=5, **params)
        got = ours.score_learn_many(part)
        _core.set_simd("baseline")
        try:
            portable = OnlineIsolationForest(seed=5, **params)
            want = portable.score_learn_many(part)
        finally:
            _core.set_simd(simd_target)
        np.testing.assert_array_equal(got, want)
        assert ours.to_bytes() == portable.to_bytes()


def test_online_forest_is_seeded():
    X, _ = scaled("cardio", 1500)
    a = OnlineIsolationForest(seed=1).score_learn_many(X)
    np.testing.assert_array_equal(a, OnlineIsolationForest(seed=1).score_learn_many(X))
    assert not np.array_equal(a, OnlineIsolationForest(seed=2).score_learn_many(X))
    assert np.all((a >= 0) & (a <= 1))


@pytest.mark.parametrize("name", dataset_params(["cardio", "thyroid", "mammography"]))
def test_online_forest_ranks_outliers_at_least_as_well_as_half_space_trees(name):
    """Mean ROC-AUC over seeds on a shuffled stream (the bench does 20 seeds, more streams)."""
    X, y = scaled(name, 4000)
    hst = np.mean([roc_auc(y, HalfSpaceTrees(seed=s).score_learn_many(X)) for s in range(4)])
    oif = np.mean([roc_auc(y, OnlineIsolationForest(seed=s).score_learn_many(X)) for s in range(4)])
    assert oif > 0.75
    assert oif >= hst - 0.02, (oif, hst)


BAD_RECORDS = [
    ("missing", lambda x: {k: v for k, v in x.items() if k != 2}, "missing \\[2\\]"),
    ("extra", lambda x: {**x, 99: 0.5}, "extra \\[99\\]"),
    ("nan", lambda x: {**x, 3: float("nan")}, "finite"),
    ("inf", lambda x: {**x, 3: float("inf")}, "finite"),
    ("string", lambda x: {**x, 4: "0.5"}, "str, not a number"),
    ("none", lambda x: {**x, 4: None}, "NoneType, not a number"),
    ("not a dict", lambda x: list(x.values()), "dict"),
]


@pytest.mark.parametrize("make", DETECTORS)
@pytest.mark.parametrize("what,bad,message", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_is_a_clear_error_and_changes_nothing(make, what, bad, message):
    X, _ = scaled("cardio", 300)
    m = make()
    m.learn_many(X)
    before = m.to_bytes()
    x = records(X[:1])[0]
    for call in (m.learn_one, m.score_one):
        with pytest.raises(InvalidInputError, match=message):
            call(bad(x))
    assert m.to_bytes() == before


@pytest.mark.parametrize("make", DETECTORS)
def test_bad_arrays_are_clear_errors_and_change_nothing(make):
    X, _ = scaled("cardio", 300)
    m = make()
    m.learn_many(X)
    before = m.to_bytes()
    Y = X[:50].copy()
    Y[40, 5] = np.nan
    for call in (m.learn_many, m.score_learn_many, m.score_many):
        with pytest.raises(InvalidInputError, match="row 40, column 5"):
            call(Y)
        with pytest.raises(InvalidInputError, match="21 columns"):
            call(X[:5, :20])
        with pytest.raises(InvalidInputError, match="numbers"):
            call(np.array([["a"] * 21]))
    assert m.to_bytes() == before


def test_importing_loads_neither_the_core_nor_river():
    import subprocess
    import sys

    code = ("import sys, pynomaly; from pynomaly.stream import HalfSpaceTrees; m = HalfSpaceTrees(limits={'a': (0, 2)}); "
            "assert 'pynomaly._core' not in sys.modules and 'river' not in sys.modules; print(repr(m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "limits={'a': (0.0, 2.0)}" in out


def test_first_record_fixes_the_features_only_when_valid():
    m = HalfSpaceTrees(seed=0)
    with pytest.raises(InvalidInputError):
        m.learn_one({"a": 0.1, "b": "x"})
    assert m.features_ is None
    m.learn_one({"b": 0.2, "a": 0.1})
    assert m.features_ == ("a", "b")
    assert HalfSpaceTrees(features=["z", "a"]).features_ == ("z", "a")
    fresh = OnlineIsolationForest(seed=0)
    with pytest.raises(InvalidInputError, match="row 1, column 0"):
        fresh.learn_many([[0.5, 0.5], [np.inf, 0.5]])
    assert fresh.features_ is None and fresh.to_bytes() == OnlineIsolationForest(seed=0).to_bytes()
    with pytest.raises(InvalidInputError, match="repeat"):
        HalfSpaceTrees(features=["a", "a"])


@pytest.mark.parametrize("make", DETECTORS)
def test_what_left_the_window_is_forgotten(make):
    """A region the stream has left becomes anomalous once the window has moved on."""
    rng = np.random.default_rng(0)
    m = make()
    old, new = rng.uniform(0.0, 0.2, size=(3000, 2)), rng.uniform(0.8, 1.0, size=(3000, 2))
    m.learn_many(old)
    before = m.score_many([[0.1, 0.1], [0.9, 0.9]])
    m.learn_many(new)
    after = m.score_many([[0.1, 0.1], [0.9, 0.9]])
    assert before[0] < before[1]
    assert after[0] > 1.35 * after[1]  # clearly: without forgetting, the forest gives about 1.27


@pytest.mark.parametrize("make", DETECTORS)
def test_state_size_does_not_grow_with_the_stream(make):
    rng = np.random.default_rng(0)
    m = make()
    sizes = []
    for _ in range(8):
        m.learn_many(rng.uniform(size=(2000, 6)))
        sizes.append((len(m.to_bytes()), m.memory_bytes()))
    # after the window has filled (the first batch), nothing grows beyond the trees' churn
    assert max(s for s, _ in sizes[2:]) <= 1.25 * sizes[1][0]
    assert max(b for _, b in sizes[2:]) <= 1.25 * max(b for _, b in sizes[:2])


@pytest.mark.parametrize("cls", [HalfSpaceTrees, OnlineIsolationForest])
def test_damaged_snapshots_are_model_format_errors(cls):
    X, _ = scaled("cardio", 600)
    m = cls(seed=4, window_size=100)
    m.learn_many(X)
    blob = m.to_bytes()
    other = (OnlineIsolationForest if cls is HalfSpaceTrees else HalfSpaceTrees)(seed=1)
    for bad in (b"", blob[:10], blob[:-1], blob + b"\0", blob[:40] + bytes([blob[40] ^ 1]) + blob[41:],
                other.to_bytes(), b"\x80\x04pickle"):
        with pytest.raises(ModelFormatError):
            cls.from_bytes(bad)
    # a state whose inner fields are hostile, behind a right checksum: refused by the native reader
    import struct
    import zlib

    rng = np.random.default_rng(0)
    body = blob[:-4]
    n_header = struct.unpack_from("<I", body, 20)[0]
    state_at = 24 + n_header + 8
    for _ in range(200):
        b = bytearray(body)
        for i in rng.integers(state_at, len(b), 3):
            b[i] = rng.integers(0, 256)
        b = bytes(b)
        try:
            cls.from_bytes(b + struct.pack("<I", zlib.crc32(b)))
        except ModelFormatError:
            pass
