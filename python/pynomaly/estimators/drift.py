"""Drift monitoring's numbers: the reference profile a version is trained with, the live counts
of served rows on its bins, and the statistics that compare them. Plain NumPy (the counting
kernel is native, :func:`pynomaly._core.drift_count`); no store, no service.

**Bins.** For each feature the reference keeps B (default 100) exact equal-frequency edges:
the training values of ranks ceil(k n / B) for k = 1..B and the minimum, a value repeated
across several quantiles kept once (so a heavy value is one edge, never split). With edges
e_0 < ... < e_{m-1} a value x falls in bin j = #(edges < x) (``np.searchsorted(e, x,
"left")``): bins (-inf, e_0], (e_0, e_1], ..., (e_{m-1}, +inf), m + 1 of them. The reference
keeps F(e_j), the fraction of training values <= e_j, exactly. Live counts add: two windows'
counts summed are the counts of the rows of both.

**Statistics** (:func:`compare`), per feature and for the score:

- KS: max_j |F(e_j) - G(e_j)| with G the live fraction <= e_j. Between two edges neither CDF
  can move by more than the bin's reference mass, so it is within ``ks_error`` (the largest
  reference mass of one bin: 1/B for a continuous feature) of ``scipy.stats.ks_2samp`` on the
  raw samples. Its p-value is the asymptotic Kolmogorov distribution with Stephens' correction
  (lambda = (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) D, ne = n m / (n + m); Numerical Recipes'
  probks), the two-sample approximation scipy's ``method="asymp"`` also rests on.
- PSI: sum (q - p) ln(q / p) over the reference's deciles (the fine bins merged into
  ``psi_bins`` = 10 groups of about equal reference mass; the industry's 10 bins: with B =
  100 bins an undrifted sample of n rows would already score about B / n). Empty groups are
  smoothed: each fraction becomes (f + eps) / (1 + k eps), eps = 1e-4, on both sides.
- Wasserstein-1: the integral of |F - G|, each CDF held at its value on an edge until the
  next (exact when every value lies on an edge, as a discrete feature's do; otherwise within
  ``wasserstein_error`` = sum over bins of (p + q) x width), and exact outside the reference's
  range (the live tails' distances to the extreme edges are counted).
- For the score, the same on the training scores' bins, plus the flagged rate (score above the
  trained threshold) against the training's rate: a two-sided binomial test by the normal
  approximation (z = (k - n r) / sqrt(n r (1 - r)), p = erfc(|z| / sqrt 2)), good once
  n r (1 - r) is about 10 or more.

**Decisions.** A feature drifts when its PSI >= ``psi_threshold`` (0.2; method "psi", the
default) or, with method "ks", when its KS p-value < alpha / k (Bonferroni over the k tests:
every feature and the score distribution, alibi-detect's KSDrift rule). The score drifts by
the same rule, or when the flagged rate's p-value < alpha / (k + 1). Overall drift: any.

**Too few rows decide nothing.** Below ``min_rows`` (:data:`MIN_ROWS` = 300) rows counted, the
statistics are given but every ``drift`` is None and ``reason`` says why: on few rows noise
alone passes PSI 0.2. Undrifted, PSI on 10 groups is about chi-squared with 9 degrees of
freedom times (1/n + 1/N) (n live rows, N reference rows; mean 9 (1/n + 1/N)). With a large
reference one feature reaches 0.2 with probability P(chi2_9 >= 0.2 n): 0.35 at n = 50, 0.018
at 100, 4e-4 at 150, 8e-6 at 200, 1e-9 at 300. Measured, some feature of 20 standard normal
ones (reference 10,000 rows, 300 windows each) "drifted" in 100% of windows of 50 rows, 53% of
100, 1.3% of 150, none of 200; on cardio (21 features, a reference of 915 rows whose own noise
adds) in 9% of windows of 150 rows, 0.7% of 200, none of 250 or 300. A 0.5 standard deviation
shift of one normal feature is flagged in about 90% of windows of 300 rows. 300 rows also make
the flagged-rate test's normal approximation sound for rates down to 4% (n r (1 - r) >= 10).

**Profile bytes** (:meth:`Profile.to_bytes`, stored with each version)::

    "PYNOMALY-DRIFT\\n\\0"  16 bytes
    u32 format version (1), u32 header length H       little-endian
    H bytes of JSON: {"n_rows", "bins", "features": [{"name", "n_edges", "mean", "var"}, ...],
                      "score": null | {"n_edges", "mean", "var", "threshold", "expected_rate"}}
    per histogram (the features in order, then the score): n_edges float64 edges, then
    n_edges float64 fractions F(e_j)                  little-endian

No pickle; :meth:`Profile.from_bytes` checks every length and value and raises
ModelFormatError for anything else (fuzzed: tests/fuzz/fuzz_loaders.py).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pynomaly._errors import InvalidInputError, ModelFormatError
from pynomaly.domain import flagged

__all__ = ["Histogram", "Profile", "Counts", "reference_profile", "count", "compare", "PSI_EPS", "METHODS",
           "MIN_ROWS"]

MAGIC = b"PYNOMALY-DRIFT\n\0"
FORMAT_VERSION = 1
PSI_EPS = 1e-4
METHODS = ("psi", "ks")
MIN_ROWS = 300  # rows counted before a decision (see "Too few rows decide nothing" above)
_HEAD = struct.Struct("<II")
_MAX_HEADER = 16 << 20
_MAX_EDGES = 1 << 16
_MAX_FEATURES = 1 << 16


# -- the reference ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Histogram:
    """One variable's reference: ``edges`` (strictly increasing), ``cum`` (the reference
    fraction <= each edge; the last is 1), the mean and variance of the values."""

    edges: np.ndarray
    cum: np.ndarray
    mean: float
    var: float

    @property
    def fractions(self) -> np.ndarray:
        """The reference mass of each of the len(edges) + 1 bins."""
        return np.diff(self.cum, prepend=0.0, append=1.0)

    @classmethod
    def of(cls, values: np.ndarray, bins: int) -> "Histogram":
        v = np.sort(np.asarray(values, dtype=np.float64))
        n = v.size
        ranks = np.ceil(np.arange(1, bins + 1) * n / bins).astype(np.int64) - 1
        edges = np.unique(np.concatenate([v[:1], v[ranks]]))
        cum = np.searchsorted(v, edges, side="right") / n
        return cls(edges, cum, float(v.mean()), float(v.var()))


@dataclass(frozen=True)
class Profile:
    """A version's reference: a :class:`Histogram` per feature and one of the training scores
    (None where the model kept none), the trained threshold and the training's flagged rate."""

    feature_names: tuple
    features: tuple
    n_rows: int
    bins: int
    score: Optional[Histogram] = None
    threshold: Optional[float] = None
    expected_rate: Optional[float] = None

    @property
    def n_features(self) -> int:
        return len(self.features)

    def layout(self, which: str = "features"):
        """``(edges, offsets)`` as :func:`pynomaly._core.drift_count` takes them (made once:
        a serving process counts every batch on them)."""
        made = self.__dict__.setdefault("_layouts", {})
        if which not in made:
            hs = self.features if which == "features" else (self.score,)
            offsets = np.cumsum([0] + [h.edges.size for h in hs]).astype(np.int64)
            made[which] = (np.concatenate([h.edges for h in hs]), offsets)
        return made[which]

    # -- bytes ---------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The documented layout (see the module's docstring)."""
        hs = list(self.features) + ([self.score] if self.score is not None else [])
        header = {
            "n_rows": int(self.n_rows),
            "bins": int(self.bins),
            "features": [{"name": str(n), "n_edges": int(h.edges.size), "mean": h.mean, "var": h.var}
                         for n, h in zip(self.feature_names, self.features)],
            "score": None if self.score is None else {
                "n_edges": int(self.score.edges.size), "mean": self.score.mean, "var": self.score.var,
                "threshold": self.threshold, "expected_rate": self.expected_rate},
        }
        head = json.dumps(header, allow_nan=False).encode()
        body = b"".join(np.asarray(a, dtype="<f8").tobytes() for h in hs for a in (h.edges, h.cum))
        return MAGIC + _HEAD.pack(FORMAT_VERSION, len(head)) + head + body

    @classmethod
    def from_bytes(cls, data) -> "Profile":
        """A profile from :meth:`to_bytes`'s bytes; ModelFormatError for anything else."""
        data = bytes(data)
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEAD.size:
            raise ModelFormatError("not a drift profile (the bytes do not start with PYNOMALY-DRIFT)")
        version, hlen = _HEAD.unpack_from(data, len(MAGIC))
        if version != FORMAT_VERSION:
            raise ModelFormatError(f"drift profile format {version} is not known (this version reads 1)")
        start = len(MAGIC) + _HEAD.size
        if hlen > min(_MAX_HEADER, len(data) - start):
            raise ModelFormatError("the drift profile's header length runs past its end")
        try:
            header = json.loads(data[start:start + hlen])
        except (ValueError, RecursionError):
            raise ModelFormatError("the drift profile's header is not JSON") from None
        if not isinstance(header, dict):
            raise ModelFormatError("the drift profile's header is not a JSON object")
        n_rows, bins = _int(header, "n_rows", 1, 1 << 62), _int(header, "bins", 1, _MAX_EDGES)
        feats, score = header.get("features"), header.get("score")
        if not isinstance(feats, list) or not 1 <= len(feats) <= _MAX_FEATURES or not all(isinstance(f, dict) for f in feats):
            raise ModelFormatError("the drift profile's 'features' must be a list of 1 to 65536 objects")
        if score is not None and not isinstance(score, dict):
            raise ModelFormatError("the drift profile's 'score' must be an object or null")
        specs = feats + ([score] if score is not None else [])
        sizes = [_int(s, "n_edges", 1, _MAX_EDGES) for s in specs]
        body = data[start + hlen:]
        if len(body) != 16 * sum(sizes):
            raise ModelFormatError(f"the drift profile holds {len(body)} bytes of bins; its header says "
                                   f"{16 * sum(sizes)}")
        arrays = np.frombuffer(body, dtype="<f8").astype(np.float64)
        hists, at = [], 0
        for i, (spec, m) in enumerate(zip(specs, sizes)):
            edges, cum = arrays[at:at + m], arrays[at + m:at + 2 * m]
            at += 2 * m
            if not (np.isfinite(edges).all() and (np.diff(edges) > 0).all()):
                raise ModelFormatError(f"histogram {i} of the drift profile has edges that are not finite and increasing")
            if not (np.isfinite(cum).all() and (np.diff(cum) >= 0).all() and cum[0] >= 0 and cum[-1] == 1.0):
                raise ModelFormatError(f"histogram {i} of the drift profile has fractions that do not rise to 1")
            hists.append(Histogram(edges, cum, _float(spec, "mean"), _float(spec, "var")))
        names = tuple(f.get("name") for f in feats)
        if not all(isinstance(n, str) for n in names):
            raise ModelFormatError("the drift profile's feature names must be strings")
        threshold = rate = None
        if score is not None:
            threshold, rate = _float(score, "threshold", True), _float(score, "expected_rate", True)
            if rate is not None and not 0.0 <= rate <= 1.0:
                raise ModelFormatError("the drift profile's expected_rate must be in [0, 1]")
        return cls(names, tuple(hists[:len(feats)]), n_rows, bins, hists[len(feats)] if score is not None else None,
                   threshold, rate)


def _int(obj: dict, key: str, lo: int, hi: int) -> int:
    v = obj.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise ModelFormatError(f"the drift profile's {key!r} must be an integer in [{lo}, {hi}], got {str(v)[:40]}")
    return v


def _float(obj: dict, key: str, optional: bool = False):
    v = obj.get(key)
    if v is None and optional:
        return None
    if type(v) not in (int, float) or not math.isfinite(v):
        raise ModelFormatError(f"the drift profile's {key!r} must be a finite number, got {str(v)[:40]}")
    return float(v)


def reference_profile(X, feature_names=None, scores=None, threshold=None, *, bins: int = 100) -> Profile:
    """The reference of a version trained on ``X`` (its rows), with the training ``scores`` and
    ``threshold`` when the model has them.

    ``bins`` (B) equal-frequency edges per feature; see the module's docstring.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise InvalidInputError(f"a drift reference needs a 2-dimensional table with rows, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InvalidInputError("a drift reference needs finite values (X holds NaN or infinity)")
    if type(bins) is not int or not 1 <= bins <= _MAX_EDGES - 1:
        raise InvalidInputError(f"bins must be an integer in [1, {_MAX_EDGES - 1}], got {bins!r}")
    names = tuple(feature_names) if feature_names is not None else tuple(f"x{i}" for i in range(X.shape[1]))
    if len(names) != X.shape[1]:
        raise InvalidInputError(f"{len(names)} feature names for {X.shape[1]} columns")
    features = tuple(Histogram.of(X[:, j], bins) for j in range(X.shape[1]))
    score_hist = rate = None
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64).ravel()
        if s.size == X.shape[0] and np.isfinite(s).all():
            score_hist = Histogram.of(s, bins)
            if threshold is not None and math.isfinite(float(threshold)):
                threshold = float(threshold)
                rate = float(np.count_nonzero(flagged(s, threshold)) / s.size)
            else:
                threshold = None
    return Profile(names, features, X.shape[0], bins, score_hist, threshold if score_hist is not None else None, rate)


# -- live counts -----------------------------------------------------------------------------
@dataclass
class Counts:
    """Served rows counted on a profile's bins: ``features`` (int64, every feature's bins one
    after the other, as :meth:`Profile.layout` orders them), ``tails`` (float64, per feature the
    summed distances below its first and above its last edge), the same for the score
    (``score``/``score_tails``, empty without a score histogram), ``rows`` (rows counted),
    ``seen`` (rows served: more than ``rows`` when large batches were sampled) and ``flagged``
    (served rows scored above the trained threshold). They add: see :meth:`add`."""

    features: np.ndarray
    tails: np.ndarray
    score: np.ndarray
    score_tails: np.ndarray
    rows: int = 0
    seen: int = 0
    flagged: int = 0
    scored: int = 0

    @classmethod
    def empty(cls, profile: Profile) -> "Counts":
        nb = sum(h.edges.size + 1 for h in profile.features)
        ns = profile.score.edges.size + 1 if profile.score is not None else 0
        return cls(np.zeros(nb, np.int64), np.zeros((profile.n_features, 2)), np.zeros(ns, np.int64),
                   np.zeros((1 if ns else 0, 2)))

    def add(self, other: "Counts") -> "Counts":
        """Add ``other``'s counts into these (same profile); returns self."""
        if other.features.shape != self.features.shape or other.score.shape != self.score.shape:
            raise InvalidInputError("drift counts of different profiles cannot be added")
        self.features += other.features
        self.tails += other.tails
        self.score += other.score
        self.score_tails += other.score_tails
        self.rows += other.rows
        self.seen += other.seen
        self.flagged += other.flagged
        self.scored += other.scored
        return self

    # Stored bytes: 5 little-endian int64 (rows, seen, flagged, scored, number of bins), the
    # feature bins then the score bins (int64), then the tails (float64).
    def to_bytes(self) -> bytes:
        head = np.asarray([self.rows, self.seen, self.flagged, self.scored,
                           self.features.size + self.score.size], dtype="<i8")
        return (head.tobytes() + self.features.astype("<i8").tobytes() + self.score.astype("<i8").tobytes()
                + self.tails.astype("<f8").tobytes() + self.score_tails.astype("<f8").tobytes())

    @classmethod
    def from_bytes(cls, data, profile: Profile) -> "Counts":
        """Counts stored by :meth:`to_bytes` for ``profile``; ModelFormatError if they do not fit it."""
        c = cls.empty(profile)
        nb, ns = c.features.size, c.score.size
        want = 8 * (5 + nb + ns) + 8 * (c.tails.size + c.score_tails.size)
        data = bytes(data)
        if len(data) != want:
            raise ModelFormatError(f"stored drift counts hold {len(data)} bytes; this profile's take {want}")
        ints = np.frombuffer(data, dtype="<i8", count=5 + nb + ns).astype(np.int64)
        if ints[4] != nb + ns or (ints < 0).any():
            raise ModelFormatError("stored drift counts do not fit this profile's bins")
        floats = np.frombuffer(data, dtype="<f8", offset=8 * (5 + nb + ns)).astype(np.float64)
        c.rows, c.seen, c.flagged, c.scored = (int(v) for v in ints[:4])
        c.features[:] = ints[5:5 + nb]
        c.score[:] = ints[5 + nb:]
        c.tails[:] = floats[:c.tails.size].reshape(c.tails.shape)
        c.score_tails[:] = floats[c.tails.size:].reshape(c.score_tails.shape)
        # What counting guarantees, so a report never divides by an empty feature: every counted
        # row lies in one bin of each feature, scores were counted for at most those rows, the
        # tails are distances, and flagged rows are scored ones.
        starts = np.cumsum([0] + [h.edges.size + 1 for h in profile.features])[:-1]
        sums = np.add.reduceat(c.features, starts) if nb else np.zeros(0, np.int64)
        if (sums != c.rows).any() or c.score.sum() > c.rows or c.flagged > c.scored or c.rows > c.seen:
            raise ModelFormatError("stored drift counts are inconsistent: each feature's bins must hold the rows "
                                   "counted, the score's at most those, flagged rows at most the scored ones")
        if not (np.isfinite(floats).all() and (floats >= 0).all()):
            raise ModelFormatError("stored drift counts hold tails that are not finite, non-negative distances")
        return c


def sample_step(n: int, sample_above: int) -> int:
    """Every how many rows a batch of ``n`` is profiled: 1 up to ``sample_above`` rows, else
    ceil(n / sample_above) (so a large batch is profiled on about ``sample_above`` rows, evenly
    spread)."""
    return 1 if n <= sample_above else -(-n // sample_above)


def _snapped(profile: Profile, rows32: np.ndarray) -> np.ndarray:
    """float32 rows as float64, each value that equals an edge rounded to float32 replaced by
    that edge: a value served as float32 arrives rounded, and a feature's repeated values
    (kept as edges) would otherwise fall on either side of their own edge (cardio served as
    float32: PSI up to 16 on unshifted rows)."""
    out = rows32.astype(np.float64)
    for f, h in enumerate(profile.features):
        e32 = h.edges.astype(np.float32)
        col = rows32[:, f]
        i = np.minimum(np.searchsorted(e32, col), e32.size - 1)
        hit = e32[i] == col
        out[hit, f] = h.edges[i[hit]]
    return out


def count(profile: Profile, X, scores=None, *, sample_above: int = 1 << 62, n_jobs: int = 1) -> Counts:
    """``X``'s rows (and their ``scores``) counted on ``profile``'s bins.

    A batch over ``sample_above`` rows is profiled on every k-th row (:func:`sample_step`);
    the flagged rate always counts every score. float32 rows are counted as their values were
    before rounding where they round to an edge (:func:`_snapped`).
    """
    from pynomaly import _core

    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != profile.n_features:
        raise InvalidInputError(f"rows of {profile.n_features} features expected for this drift profile, "
                                f"got shape {X.shape}")
    c = Counts.empty(profile)
    n = X.shape[0]
    step = sample_step(n, sample_above)
    rows = X[::step] if step > 1 else X
    if rows.dtype == np.float32:
        rows = _snapped(profile, rows)
    edges, offsets = profile.layout()
    c.features[:], c.tails[:] = _core.drift_count(rows, edges, offsets, n_jobs)
    c.rows, c.seen = rows.shape[0], n
    if scores is not None and profile.score is not None:
        s = np.asarray(scores, dtype=np.float64).ravel()
        if s.size != n:
            raise InvalidInputError(f"{s.size} scores for {n} rows")
        se, so = profile.layout("score")
        c.score[:], c.score_tails[:] = _core.drift_count((s[::step] if step > 1 else s).reshape(-1, 1), se, so, n_jobs)
        c.scored = n
        if profile.threshold is not None:
            c.flagged = int(np.count_nonzero(flagged(s, profile.threshold)))
    return c


# -- statistics ------------------------------------------------------------------------------
def ks_pvalue(d: float, n: int, m: int) -> float:
    """The asymptotic two-sample Kolmogorov-Smirnov p-value with Stephens' correction."""
    if n < 1 or m < 1:
        return 1.0
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 0.2:
        return 1.0
    k = np.arange(1, 101)
    q = 2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k * k * lam * lam))
    return float(min(1.0, max(0.0, q)))


def psi_groups(hist: Histogram, psi_bins: int) -> np.ndarray:
    """Where the fine bins are cut into PSI's groups (``np.add.reduceat`` indices): before the
    first fine bin, and after the bin where the reference's mass first reaches k / psi_bins."""
    cuts = np.searchsorted(hist.cum, np.arange(1, psi_bins) / psi_bins, side="left") + 1
    return np.unique(np.concatenate([[0], cuts[cuts <= hist.edges.size]]))


def psi(p: np.ndarray, q: np.ndarray, eps: float = PSI_EPS) -> float:
    """The population stability index of fractions ``q`` against ``p`` (same bins), each
    smoothed to (f + eps) / (1 + k eps)."""
    k = p.size
    ps, qs = (p + eps) / (1 + k * eps), (q + eps) / (1 + k * eps)
    return float(np.sum((qs - ps) * np.log(qs / ps)))


def histogram_stats(hist: Histogram, counts: np.ndarray, tails: np.ndarray, n_ref: int, *, psi_bins: int = 10) -> dict:
    """PSI, KS (with its error bound and p-value) and Wasserstein-1 (with its error bound) of
    live ``counts`` against ``hist``; see the module's docstring."""
    n = int(counts.sum())
    p = hist.fractions
    q = counts / n
    F, G = hist.cum, np.cumsum(q)[:-1]
    diff = np.abs(F - G)
    ks = float(diff.max())
    widths = np.diff(hist.edges)
    inner = float(np.sum(widths * diff[:-1]))  # both CDFs held from each edge to the next
    inner_err = float(np.sum(widths * (p[1:-1] + q[1:-1])))
    groups = psi_groups(hist, psi_bins)
    return {
        "psi": psi(np.add.reduceat(p, groups), np.add.reduceat(q, groups)),
        "ks": ks,
        "ks_error": float(p.max()),
        "p_value": ks_pvalue(ks, n, n_ref),
        "wasserstein": inner + float(tails[0] + tails[1]) / n,
        "wasserstein_error": inner_err,
    }


def rate_pvalue(k: int, n: int, r: float) -> float:
    """Two-sided binomial test of ``k`` flagged among ``n`` against rate ``r`` (normal
    approximation)."""
    if n < 1:
        return 1.0
    if r <= 0.0 or r >= 1.0:
        return 1.0 if k == round(n * r) else 0.0
    z = (k - n * r) / math.sqrt(n * r * (1 - r))
    return math.erfc(abs(z) / math.sqrt(2))


def compare(profile: Profile, counts: Counts, *, method: str = "psi", psi_threshold: float = 0.2,
            alpha: float = 0.05, psi_bins: int = 10, min_rows: int = MIN_ROWS) -> dict:
    """The drift document of ``counts`` against ``profile``: ``{"drift", "reason", "rows",
    "rows_seen", "sample_rate", "min_rows", "method", "psi_threshold", "alpha", "bins",
    "features": [...], "score": ...}`` with the features most drifted first (PSI, or the KS
    p-value with method "ks"). Fewer than ``min_rows`` rows counted: every ``drift`` (overall,
    each feature's, the score's) is None and ``reason`` says so; otherwise ``reason`` is None.

    Each feature is ``{"feature", "psi", "ks", "ks_error", "p_value", "wasserstein",
    "wasserstein_error", "drift"}``; the score (None without a score histogram or scores) adds
    ``flagged``, ``scored``, ``flagged_rate``, ``expected_rate``, ``rate_p_value``.
    """
    if method not in METHODS:
        raise InvalidInputError(f"drift method {method!r} is not known; accepted: {', '.join(METHODS)}")
    if not (math.isfinite(psi_threshold) and psi_threshold > 0):
        raise InvalidInputError(f"psi_threshold must be a positive number, got {psi_threshold!r}")
    if not 0 < alpha < 1:
        raise InvalidInputError(f"alpha must be in (0, 1), got {alpha!r}")
    if isinstance(min_rows, bool) or not isinstance(min_rows, (int, np.integer)) or min_rows < 1:
        raise InvalidInputError(f"min_rows must be a positive whole number of rows, got {min_rows!r}")
    if counts.rows < 1:
        raise InvalidInputError("no rows were counted: nothing to compare with the reference")
    decided = counts.rows >= min_rows
    has_score = profile.score is not None and counts.score.sum() > 0
    tests = profile.n_features + (1 if has_score else 0)

    def decide(s: dict) -> Optional[bool]:
        if not decided:
            return None
        return bool(s["psi"] >= psi_threshold if method == "psi" else s["p_value"] < alpha / tests)

    features, at = [], 0
    for name, h, tails in zip(profile.feature_names, profile.features, counts.tails):
        s = histogram_stats(h, counts.features[at:at + h.edges.size + 1], tails, profile.n_rows, psi_bins=psi_bins)
        at += h.edges.size + 1
        features.append({"feature": name, **s, "drift": decide(s)})
    if method == "psi":
        features.sort(key=lambda f: (-f["psi"], -f["ks"]))
    else:
        features.sort(key=lambda f: (f["p_value"], -f["ks"]))
    score = None
    if has_score:
        s = histogram_stats(profile.score, counts.score, counts.score_tails[0], profile.n_rows, psi_bins=psi_bins)
        r = profile.expected_rate
        rate_p = rate_pvalue(counts.flagged, counts.scored, r) if r is not None else None
        rate_drift = rate_p is not None and rate_p < alpha / (tests + 1)
        score = {**s, "flagged": counts.flagged, "scored": counts.scored,
                 "flagged_rate": counts.flagged / counts.scored if counts.scored else None,
                 "expected_rate": r, "rate_p_value": rate_p, "drift": (decide(s) or rate_drift) if decided else None}
    reason = None
    if not decided:
        seen = f" (of {counts.seen} served)" if counts.seen > counts.rows else ""
        reason = f"{counts.rows} rows counted{seen}, at least {min_rows} needed to decide drift"
    return {
        "drift": (any(f["drift"] for f in features) or bool(score and score["drift"])) if decided else None,
        "reason": reason,
        "rows": counts.rows,
        "rows_seen": counts.seen,
        "sample_rate": counts.rows / counts.seen if counts.seen else 1.0,
        "min_rows": int(min_rows),
        "method": method,
        "psi_threshold": psi_threshold,
        "alpha": alpha,
        "bins": profile.bins,
        "features": features,
        "score": score,
    }
