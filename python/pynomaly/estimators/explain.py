"""Why is a row anomalous: the one result type of ``detector.explain(X)`` and what the
detectors share to compute it.

Every detector has ``explain(X, method=None, output=None)`` (see
:meth:`pynomaly.estimators.base.BaseDetector.explain`) returning an :class:`Explanation`:
per-row, per-feature attributions whose sum plus a base value is a named quantity
(``output``) of the detector's score. The methods, and what they add up to:

============== ============================ ============================================================
detector       method (first = default)     values + base_values equal
============== ============================ ============================================================
IsolationForest ``tree_shap``, ``path``      ``log2_score``: log2 of the anomaly score (default), or
                                              ``path_length``: the mean path length E[h(x)]
KNN, LOF       ``neighbors``                ``score``: ``decision_function(X)``
TorchAutoEncoder ``reconstruction``          ``score``: the mean squared reconstruction error
any detector   ``permutation``              ``score``: ``decision_function(X)`` (a sampled estimate of
                                              the Shapley values; the sum is exact)
============== ============================ ============================================================

Positive values push a row toward anomalous, except for ``output="path_length"`` (shap's
quantity, kept for comparison with ``shap.TreeExplainer``), where shorter paths are the
anomalous ones. Each detector's docstring for ``explain`` says what is exact.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

import numpy as np

from pynomaly._errors import InvalidInputError

__all__ = ["Explanation", "permutation_shapley", "background_sample", "neighbor_shares", "check_additive_metric"]

# Outputs on which a smaller value is the anomalous direction.
_DECREASING = frozenset({"path_length"})

BACKGROUND_ROWS = 32  # training rows a detector keeps at fit for the model-agnostic method
PERMUTATIONS = 10  # 5 permutations and their reverses (antithetic pairs)


@dataclass(frozen=True, eq=False)
class Explanation:
    """Per-feature attributions of some rows' anomaly scores.

    Attributes
    ----------
    values : ndarray of float64, shape (n, d)
        The attribution of each feature of each row.
    base_values : ndarray of float64, shape (n,)
        What the values start from: ``values.sum(axis=1) + base_values`` equals ``output``
        of each row (to rounding).
    feature_names : list of str
        The detector's ``feature_names_in_``, else ``x0 .. x{d-1}``.
    output : str
        What values plus base add up to (e.g. "log2_score", "path_length", "score").
    method : str
        How the values were computed (e.g. "tree_shap", "path", "neighbors", "permutation").
    data : ndarray of float64, shape (n, d)
        The rows explained (their feature values, shown by :meth:`top`).
    """

    values: np.ndarray
    base_values: np.ndarray
    feature_names: list
    output: str
    method: str
    data: np.ndarray

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def anomalous_sign(self) -> int:
        """+1 where larger values push toward anomalous, -1 for ``output="path_length"``."""
        return -1 if self.output in _DECREASING else 1

    def top_indices(self, k: int) -> np.ndarray:
        """(n, k) feature indices per row, the one pushing most toward anomalous first (ties:
        lower index first)."""
        k = check_top_k(k, self.values.shape[1])
        order = np.argsort(-self.anomalous_sign * self.values, axis=1, kind="stable")
        return order[:, :k]

    def top(self, k: int, rows=None) -> list:
        """Per row (or per row index in ``rows``), its ``k`` features pushing most toward
        anomalous, as a list of ``(feature name, value of the feature, attribution)`` tuples;
        k in [1, d]."""
        idx = self.top_indices(k)  # k checked even when no row is asked for
        return [
            [(self.feature_names[j], float(self.data[r, j]), float(self.values[r, j])) for j in idx[r]]
            for r in (range(len(idx)) if rows is None else rows)
        ]


def check_top_k(k, d: int) -> int:
    """k as an int in [1, d], else InvalidInputError saying what is accepted."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= d:
        raise InvalidInputError(f"k (the number of top features) must be an integer from 1 to {d} (the number of "
                                f"features), got {k!r}")
    return int(k)


def check_request(who: str, methods: dict, method, output) -> tuple:
    """The (method, output) pair to use; ``methods`` maps each method to its outputs, the
    first of each being the default."""
    if method is None:
        method = next(iter(methods))
    if not isinstance(method, str) or method not in methods:
        raise InvalidInputError(f"{who} cannot explain with method {method!r}; its methods are "
                                f"{', '.join(repr(m) for m in methods)} (None: {next(iter(methods))!r})")
    outputs = methods[method]
    if output is None:
        output = outputs[0]
    if not isinstance(output, str) or output not in outputs:
        raise InvalidInputError(f"{who} explains {method!r} as output {', '.join(repr(o) for o in outputs)}; "
                                f"got output={output!r}")
    return method, output


def feature_names_of(model, d: int) -> list:
    names = model.__dict__.get("feature_names_in_")
    return [str(n) for n in names] if names is not None else list(_generated_names(d))


@functools.lru_cache(maxsize=64)
def _generated_names(d: int) -> tuple:
    """``x0 .. x{d-1}``, made once per d: a served row's explanation would spend 3 us on them."""
    return tuple(f"x{j}" for j in range(d))


def background_sample(X: np.ndarray, rows: int = BACKGROUND_ROWS, seed: int = 0) -> np.ndarray:
    """Up to ``rows`` training rows, drawn without replacement with a fixed seed, in order:
    the background the model-agnostic method measures against."""
    n = X.shape[0]
    if n <= rows:
        return np.array(X, dtype=np.float64, copy=True)
    pick = np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))
    return np.asarray(X[pick], dtype=np.float64)


def permutation_shapley(score, X: np.ndarray, background: np.ndarray, n_permutations: int = PERMUTATIONS,
                        seed: int = 0) -> tuple:
    """Shapley values of ``score`` (rows -> scores) by permutation sampling (Strumbelj and
    Kononenko 2014), interventional: a feature outside a coalition takes a background row's value.

    Each of ``n_permutations`` feature orders (half drawn with ``seed``, half their reverses,
    the same for every row, so a row's values never depend on the other rows of the call) walks
    every background row to x one feature at a time; a feature's value is its mean score step.
    Per order the steps sum to score(x) - score(b), so ``values.sum(1) + base`` equals score(x)
    exactly, with base the background's mean score. The values are unbiased estimates of the
    Shapley values against that background, with a standard error of about the spread of a
    feature's steps over sqrt(n_permutations * background rows). Cost: n_permutations * (d + 1)
    * background rows score evaluations per row.

    Returns ``(values (n, d), base_values (n,))``.
    """
    n, d = X.shape
    rng = np.random.default_rng(seed)
    half = [rng.permutation(d) for _ in range((n_permutations + 1) // 2)]
    orders = half + [p[::-1] for p in half]
    bg = np.asarray(background, dtype=np.float64)
    B = bg.shape[0]
    base = float(np.mean(score(bg)))
    values = np.zeros((n, d))
    # Coalition k of an order holds its first k features: masks[k, j] for each order.
    steps = np.arange(d + 1)[:, None]
    chunk = max(1, 2_000_000 // (B * (d + 1) * d))  # rows per evaluation batch: bounded memory
    for a in range(0, n, chunk):
        x = np.asarray(X[a:a + chunk], dtype=np.float64)
        c = x.shape[0]
        for order in orders:
            rank = np.empty(d, dtype=np.int64)
            rank[order] = np.arange(d)
            masks = rank[None, :] < steps  # (d + 1, d)
            walk = np.where(masks[None, None], x[:, None, None, :], bg[None, :, None, :])  # (c, B, d+1, d)
            s = np.asarray(score(walk.reshape(-1, d)), dtype=np.float64).reshape(c, B, d + 1)
            diffs = np.diff(s, axis=2).mean(axis=1)  # (c, d): step k adds feature order[k]
            values[a:a + c, order] += diffs
    values /= len(orders)
    return values, np.full(n, base)


def neighbor_shares(X: np.ndarray, fit_X: np.ndarray, idx: np.ndarray, dist: np.ndarray, metric: str) -> np.ndarray:
    """(n, k, d): each feature's share of the distance from each row to each of its neighbours.

    sqeuclidean: the squared difference; manhattan: the absolute difference (both sum to the
    distance exactly); euclidean: the squared difference divided by the distance (its share of
    the squared distance, scaled to sum to the distance; all zero at distance 0).
    """
    check_additive_metric(metric)
    diff = X[:, None, :] - fit_X[idx]
    if metric == "manhattan":
        return np.abs(diff)
    sq = diff * diff
    if metric == "sqeuclidean":
        return sq
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dist[:, :, None] > 0, sq / dist[:, :, None], 0.0)


def check_additive_metric(metric: str) -> None:
    """Refuse a metric that is not a sum over features (cosine), where shares are undefined."""
    if metric not in ("sqeuclidean", "euclidean", "manhattan"):
        raise InvalidInputError(f"per-feature attributions need a distance that is a sum over features "
                                f"(sqeuclidean, euclidean, manhattan); metric={metric!r} is not one (cosine "
                                f"normalises whole rows, so no feature owns a share of it); use "
                                f"method='permutation' instead")
