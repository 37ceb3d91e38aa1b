"""Drift monitoring's numbers (pynomaly.estimators.drift) against their references: the counting
kernel against np.searchsorted, PSI against a plain NumPy PSI on the same bins, the binned KS
statistic against scipy.stats.ks_2samp on the raw samples, the decisions against KSDrift's rule
(ks_2samp + Bonferroni), Wasserstein-1 against scipy's; and the profile's bytes."""

from __future__ import annotations

import numpy as np
import pytest

from pynomaly import _core
from pynomaly._errors import InvalidInputError, ModelFormatError
from pynomaly.estimators import drift

from conftest import drift_halves

stats = pytest.importorskip("scipy.stats", reason="scipy is the oracle of the drift statistics")


def _numpy_counts(profile, X):
    """The reference count: np.searchsorted(edges, x, 'left') per feature, np.bincount."""
    return np.concatenate([np.bincount(np.searchsorted(h.edges, X[:, j], side="left"), minlength=h.edges.size + 1)
                           for j, h in enumerate(profile.features)])


def _numpy_psi(p, q, eps=drift.PSI_EPS):
    k = len(p)
    p, q = (np.asarray(p) + eps) / (1 + k * eps), (np.asarray(q) + eps) / (1 + k * eps)
    return float(np.sum((q - p) * np.log(q / p)))


@pytest.fixture(scope="module")
def cardio_halves():
    return drift_halves()[:2]


def test_counts_equal_numpy_searchsorted_on_real_data_any_dtype_and_threads(cardio_halves):
    ref, live = cardio_halves
    profile = drift.reference_profile(ref)
    edges, offsets = profile.layout()
    big = np.repeat(live, 20, axis=0)  # several chunks, so threads share the work
    for X, n_jobs in ((live, 1), (live.astype(np.float32), 1), (big, 1), (big, 2), (np.asfortranarray(big), 2),
                      (big[:, ::-1][:, ::-1], 2), (big[::-3], 2), (live[:, ::-1], 1), (big[::7].astype(np.float32), 2)):
        counts, tails = _core.drift_count(X, edges, offsets, n_jobs)
        # float32 values are compared as the float64 numbers they are, as NumPy compares them
        assert np.array_equal(counts, _numpy_counts(profile, X.astype(np.float64)))
    c1, t1 = _core.drift_count(big, edges, offsets, 1)
    c2, t2 = _core.drift_count(big, edges, offsets, 2)
    assert np.array_equal(c1, c2) and np.array_equal(t1, t2)  # bit-identical whatever the threads
    lo = np.array([h.edges[0] for h in profile.features])
    assert np.allclose(t1[:, 0], np.sum(np.clip(lo - big, 0, None), axis=0))


def test_float32_rows_count_as_the_values_they_were_sent_for(cardio_halves):
    """A repeated value kept as an edge arrives rounded when a client sends float32: counted as
    that edge, float32 traffic is binned as its float64 original (unsnapped, cardio's unshifted
    half would drift with PSI up to 16)."""
    ref, live = cardio_halves
    profile = drift.reference_profile(ref)
    c64, c32 = drift.count(profile, live), drift.count(profile, live.astype(np.float32))
    # the same bins, but for values that float32 rounding moves across a distinct edge (none here)
    assert np.array_equal(c32.features, c64.features)
    assert not drift.compare(profile, c32)["drift"]
    assert np.allclose(c32.tails, c64.tails, rtol=1e-6, atol=1e-6)


def test_counts_are_exact_where_edges_crowd_and_values_sit_on_edges():
    """Large batches look values up in a grid before the binary search: heavy tails (most edges
    in a few cells), values equal to edges and outside the range must land as searchsorted says."""
    rng = np.random.default_rng(7)
    ref = np.column_stack([rng.lognormal(0, 3, 5000), rng.integers(0, 5, 5000), rng.standard_normal(5000)])
    profile = drift.reference_profile(ref)
    edges, offsets = profile.layout()
    live = np.column_stack([rng.lognormal(0, 3.5, 20_000), rng.integers(-1, 7, 20_000), rng.standard_normal(20_000)])
    live[:3000] = ref[rng.integers(0, 5000, 3000)]  # exactly on the reference's values, so on edges
    live[3000:3100] = np.nextafter(live[3000:3100], np.inf)
    for X in (live, live[:500]):  # with and without the grid
        counts, _ = _core.drift_count(X, edges, offsets, 2)
        assert np.array_equal(counts, _numpy_counts(profile, X))


def test_the_kernel_refuses_bad_input_clearly():
    e, o = np.array([0.0, 1.0]), np.array([0, 2])
    with pytest.raises(InvalidInputError, match="not finite at row 1, column 0"):
        _core.drift_count(np.array([[0.5], [np.nan]]), e, o)
    with pytest.raises(InvalidInputError, match="3 columns; the drift profile has 1"):
        _core.drift_count(np.zeros((2, 3)), e, o)
    with pytest.raises(InvalidInputError, match="strictly increasing"):
        _core.drift_count(np.zeros((2, 1)), np.array([1.0, 0.0]), o)
    with pytest.raises(InvalidInputError, match="offsets must end"):
        _core.drift_count(np.zeros((2, 1)), e, np.array([0, 5]))


def test_edges_are_exact_equal_frequency_with_repeated_values_kept_once():
    x = np.concatenate([np.zeros(500), np.arange(1, 501, dtype=float)])  # half the rows one value
    h = drift.Histogram.of(x, 10)
    assert h.edges[0] == 0.0 and np.all(np.diff(h.edges) > 0)
    assert np.array_equal(h.cum, np.searchsorted(np.sort(x), h.edges, side="right") / x.size)
    assert h.cum[0] == 0.5 and h.cum[-1] == 1.0
    assert np.allclose(h.fractions[1:-1], 0.1) and h.fractions[-1] == 0.0  # equal mass above the heavy value


def test_psi_equals_a_numpy_psi_on_the_same_bins(cardio_halves):
    ref, live = cardio_halves
    live = live.copy()
    live[:, 2] += live[:, 2].std()
    profile = drift.reference_profile(ref)
    doc = drift.compare(profile, drift.count(profile, live))
    counts = _numpy_counts(profile, live)
    at = 0
    for j, h in enumerate(profile.features):
        c = counts[at:at + h.edges.size + 1]
        at += h.edges.size + 1
        groups = drift.psi_groups(h, 10)
        p = np.add.reduceat(h.fractions, groups)
        q = np.add.reduceat(c / c.sum(), groups)
        got = next(f["psi"] for f in doc["features"] if f["feature"] == f"x{j}")
        assert got == _numpy_psi(p, q)
        assert len(groups) <= 10
    assert doc["features"][0]["feature"] == "x2" and doc["features"][0]["drift"]


def test_psi_groups_are_deciles_of_the_reference():
    h = drift.Histogram.of(np.random.default_rng(1).standard_normal(10_000), 100)
    p = np.add.reduceat(h.fractions, drift.psi_groups(h, 10))
    assert p.size == 10 and np.allclose(p, 0.1, atol=1e-9)


def test_ks_is_within_one_bin_of_ks_2samp_on_raw_samples(cardio_halves):
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((10_000, 3)) * [1, 3, 0.5]
    live = rng.standard_normal((2_000, 3)) * [1, 3, 0.5] + [0.0, 0.3, 0.1]
    for bins in (100, 20):
        profile = drift.reference_profile(ref, bins=bins)
        doc = drift.compare(profile, drift.count(profile, live))
        for f in doc["features"]:
            j = int(f["feature"][1:])
            assert abs(f["ks"] - stats.ks_2samp(ref[:, j], live[:, j]).statistic) <= 1 / bins + 1e-12
            assert f["ks_error"] <= 1 / bins + 1 / len(ref)
    # real, partly discrete features: within the bound each reports
    ref, live = cardio_halves
    profile = drift.reference_profile(ref)
    for f in drift.compare(profile, drift.count(profile, live))["features"]:
        j = int(f["feature"][1:])
        assert abs(f["ks"] - stats.ks_2samp(ref[:, j], live[:, j]).statistic) <= f["ks_error"] + 1e-12


def test_wasserstein_is_within_its_bound_of_scipys(cardio_halves):
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((10_000, 2))
    live = np.column_stack([rng.standard_normal(2_000) + 0.7, rng.exponential(1.0, 2_000)])  # tails beyond the range
    for R, L in ((ref, live), cardio_halves):
        profile = drift.reference_profile(R)
        for f in drift.compare(profile, drift.count(profile, L))["features"]:
            j = int(f["feature"][1:])
            exact = stats.wasserstein_distance(R[:, j], L[:, j])
            assert abs(f["wasserstein"] - exact) <= f["wasserstein_error"] + 1e-9


def test_wasserstein_is_exact_when_every_value_is_an_edge():
    """Discrete features (values repeated, so each is an edge) and live values among them, or
    beyond the range: the CDFs are steps at the edges and the binned integral is exact."""
    rng = np.random.default_rng(8)
    ref = np.column_stack([rng.integers(0, 20, 10_000), rng.choice([0.5, 1.5, 4.0], 10_000)]).astype(float)
    live = np.column_stack([rng.integers(-3, 25, 2_000), rng.choice([0.5, 4.0, 9.0], 2_000)]).astype(float)
    profile = drift.reference_profile(ref)
    for f in drift.compare(profile, drift.count(profile, live))["features"]:
        j = int(f["feature"][1:])
        assert f["wasserstein"] == pytest.approx(stats.wasserstein_distance(ref[:, j], live[:, j]), rel=1e-12)


def test_decisions_agree_with_ks_2samp_and_bonferroni_on_200_batches():
    """KSDrift's rule: drift when some feature's ks_2samp p-value < alpha / features."""
    rng = np.random.default_rng(4)
    d, alpha = 5, 0.05
    ref = rng.standard_normal((10_000, d))
    profile = drift.reference_profile(ref)  # no scores: the tests are the d features
    agree = drifted = 0
    for b in range(200):
        batch = rng.standard_normal((2_000, d))
        if b % 2:
            batch[:, b % d] += 0.5
        ours = drift.compare(profile, drift.count(profile, batch), method="ks", alpha=alpha)["drift"]
        theirs = min(stats.ks_2samp(ref[:, j], batch[:, j], method="asymp").pvalue for j in range(d)) < alpha / d
        agree += ours == theirs
        drifted += ours
    assert agree >= 190, agree
    assert 95 <= drifted <= 110  # the shifted half, and about none of the rest


def test_ks_pvalue_follows_the_asymptotic_distribution():
    for d, n, m in ((0.05, 2000, 10_000), (0.02, 2000, 10_000), (0.1, 300, 500)):
        ours = drift.ks_pvalue(d, n, m)
        ne = n * m / (n + m)
        assert abs(ours - stats.kstwobign.sf(d * np.sqrt(ne))) < 0.02


def test_flagged_rate_test_against_scipys_binomial_test():
    for k, n, r in ((120, 1000, 0.1), (100, 1000, 0.1), (60, 400, 0.1)):
        assert abs(drift.rate_pvalue(k, n, r) - stats.binomtest(k, n, r).pvalue) < 0.02


def test_score_section_flags_a_rate_change():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((5_000, 2))
    scores = X[:, 0] ** 2
    profile = drift.reference_profile(X, scores=scores, threshold=float(np.quantile(scores, 0.9)))
    Y = rng.standard_normal((3_000, 2))
    same = drift.compare(profile, drift.count(profile, Y, Y[:, 0] ** 2))
    assert not same["drift"] and abs(same["score"]["expected_rate"] - 0.1) < 1e-3
    Y[:, 0] *= 1.5
    moved = drift.compare(profile, drift.count(profile, Y, Y[:, 0] ** 2))
    assert moved["score"]["drift"] and moved["score"]["rate_p_value"] < 1e-6 and moved["drift"]


def test_counts_add_and_survive_their_bytes(cardio_halves):
    ref, live = cardio_halves
    profile = drift.reference_profile(ref, scores=ref[:, 0], threshold=1.0)
    a, b = drift.count(profile, live[:300], live[:300, 0]), drift.count(profile, live[300:], live[300:, 0])
    whole = drift.count(profile, live, live[:, 0])
    merged = drift.Counts.from_bytes(a.to_bytes(), profile).add(b)
    assert np.array_equal(merged.features, whole.features) and np.array_equal(merged.score, whole.score)
    assert (merged.rows, merged.seen, merged.flagged) == (whole.rows, whole.seen, whole.flagged)
    assert np.allclose(merged.tails, whole.tails)
    with pytest.raises(ModelFormatError):
        drift.Counts.from_bytes(a.to_bytes()[:-8], profile)


@pytest.mark.parametrize("damage", ["empty feature", "bin moved across features", "score over rows",
                                    "flagged over scored", "rows over seen", "negative tail", "nan tail"])
def test_inconsistent_counts_are_refused(cardio_halves, damage):
    """Counts come back from the home's bytes: what counting guarantees is checked there, so a
    report never divides by a feature with no rows (the loaders' fuzzer found one)."""
    ref, live = cardio_halves
    profile = drift.reference_profile(ref, scores=ref[:, 0], threshold=1.0)
    c = drift.count(profile, live, live[:, 0])
    drift.Counts.from_bytes(c.to_bytes(), profile)  # as counted: fine
    first = profile.features[0].edges.size + 1  # the second feature's first bin
    if damage == "empty feature":
        c.features[:first] = 0
    elif damage == "bin moved across features":
        c.features[0] += 1
        c.features[first] -= 1 if c.features[first] else -1
    elif damage == "score over rows":
        c.score[0] += c.rows
    elif damage == "flagged over scored":
        c.flagged = c.scored + 1
    elif damage == "rows over seen":
        c.seen = c.rows - 1
    else:
        c.tails[0, 0] = -1.0 if damage == "negative tail" else np.nan
    with pytest.raises(ModelFormatError, match="drift counts"):
        drift.Counts.from_bytes(c.to_bytes(), profile)


def test_large_batches_are_profiled_on_a_sample_that_the_document_names():
    rng = np.random.default_rng(6)
    profile = drift.reference_profile(rng.standard_normal((2_000, 2)))
    c = drift.count(profile, rng.standard_normal((10_001, 2)), sample_above=1_000)
    assert c.seen == 10_001 and c.rows == 910  # every 11th row
    assert drift.compare(profile, c)["sample_rate"] == pytest.approx(910 / 10_001)


def test_profile_bytes_round_trip_and_stay_small(cardio_halves):
    ref, _ = cardio_halves
    p = drift.reference_profile(ref, [f"f{i}" for i in range(ref.shape[1])], ref[:, 0], 0.5)
    blob = p.to_bytes()
    assert len(blob) < 64_000
    q = drift.Profile.from_bytes(blob)
    assert q.feature_names == p.feature_names and q.threshold == 0.5 and q.expected_rate == p.expected_rate
    for a, b in zip(p.features + (p.score,), q.features + (q.score,)):
        assert np.array_equal(a.edges, b.edges) and np.array_equal(a.cum, b.cum) and a.var == b.var


@pytest.mark.parametrize("damage", ["magic", "version", "truncate", "header", "edges", "cum", "count", "extra"])
def test_damaged_profile_bytes_are_refused(damage):
    import json
    import struct

    blob = bytearray(drift.reference_profile(np.arange(20.0).reshape(10, 2), scores=np.arange(10.0), threshold=5.0)
                     .to_bytes())
    start = len(drift.MAGIC) + 8
    hlen = struct.unpack_from("<I", blob, len(drift.MAGIC) + 4)[0]
    if damage == "magic":
        blob[0] ^= 1
    elif damage == "version":
        struct.pack_into("<I", blob, len(drift.MAGIC), 2)
    elif damage == "truncate":
        del blob[-8:]
    elif damage == "extra":
        blob += b"\0" * 16
    elif damage == "header":
        blob[start] = ord("[")
    elif damage in ("edges", "cum"):
        at = start + hlen + (0 if damage == "edges" else 8 * 11)  # the first feature's (11 edges)
        struct.pack_into("<d", blob, at, float("nan"))
    elif damage == "count":
        head = json.loads(bytes(blob[start:start + hlen]))
        head["features"][0]["n_edges"] = 2**40
        new = json.dumps(head).encode()
        blob = blob[:len(drift.MAGIC) + 4] + struct.pack("<I", len(new)) + new + blob[start + hlen:]
    with pytest.raises(ModelFormatError):
        drift.Profile.from_bytes(bytes(blob))


def test_bad_arguments_say_what_is_accepted():
    p = drift.reference_profile(np.zeros((3, 1)))
    with pytest.raises(InvalidInputError, match="accepted: psi, ks"):
        drift.compare(p, drift.count(p, np.zeros((2, 1))), method="chi2")
    with pytest.raises(InvalidInputError, match="no rows were counted"):
        drift.compare(p, drift.Counts.empty(p))
    with pytest.raises(InvalidInputError, match="finite"):
        drift.reference_profile(np.array([[np.nan]]))
    with pytest.raises(InvalidInputError, match="rows of 1 features"):
        drift.count(p, np.zeros((2, 3)))


def test_too_few_rows_give_the_statistics_and_decide_nothing():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((10_000, 3))
    profile = drift.reference_profile(X, scores=X[:, 0] ** 2, threshold=float(np.quantile(X[:, 0] ** 2, 0.9)))
    Y = rng.standard_normal((250, 3))
    Y[:, 1] += 2.0  # far: any number of rows shows it
    few = drift.count(profile, Y[:199], Y[:199, 0] ** 2)
    doc = drift.compare(profile, few, min_rows=200)
    assert doc["drift"] is None and doc["min_rows"] == 200
    assert doc["reason"] == "199 rows counted, at least 200 needed to decide drift"
    assert all(f["drift"] is None for f in doc["features"]) and doc["score"]["drift"] is None
    assert doc["features"][0]["feature"] == "x1" and doc["features"][0]["psi"] > 1  # the statistics are given
    decided = drift.compare(profile, few, min_rows=199)
    assert decided["drift"] is True and decided["reason"] is None
    assert [f["feature"] for f in decided["features"] if f["drift"]] == ["x1"]
    strip = ("drift", "reason", "min_rows")
    assert [{k: v for k, v in f.items() if k != "drift"} for f in doc["features"]] == \
        [{k: v for k, v in f.items() if k != "drift"} for f in decided["features"]]
    assert {k: v for k, v in doc.items() if k not in strip + ("features", "score")} == \
        {k: v for k, v in decided.items() if k not in strip + ("features", "score")}
    assert drift.compare(profile, drift.count(profile, Y[:200]), min_rows=200)["drift"] is True  # 200: decided
    sampled = drift.count(profile, Y, sample_above=100)
    assert drift.compare(profile, sampled)["reason"] == "84 rows counted (of 250 served), at least 300 needed " \
        "to decide drift"
    assert drift.compare(profile, sampled)["min_rows"] == drift.MIN_ROWS == 300
    for bad in (0, -5, 2.5, True):
        with pytest.raises(InvalidInputError, match="min_rows must be a positive whole number"):
            drift.compare(profile, few, min_rows=bad)


def test_windows_of_min_rows_undrifted_rows_do_not_drift_by_noise(cardio_halves):
    """Why 300 (see the module's docstring): undrifted windows of that many rows of cardio (21
    features, a reference of 915 rows) pass PSI 0.2 nowhere, while windows of 50 rows do in
    most draws."""
    ref, live = cardio_halves
    profile = drift.reference_profile(ref)
    rng = np.random.default_rng(8)
    at_min, at_50 = 0, 0
    for _ in range(40):
        window = live[rng.choice(len(live), drift.MIN_ROWS, replace=False)]
        at_min += drift.compare(profile, drift.count(profile, window))["drift"]
        at_50 += drift.compare(profile, drift.count(profile, live[rng.choice(len(live), 50, replace=False)]),
                               min_rows=50)["drift"]
    assert at_min == 0 and at_50 >= 30
