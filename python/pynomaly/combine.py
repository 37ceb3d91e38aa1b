"""Combining the scores of several detectors (Aggarwal and Sathe 2015), as PyOD does.

Each function takes *raw* score columns ``S`` (n rows x k detectors), standardises every column
as PyOD's ``pyod.utils.utility.standardizer`` does (scikit-learn's StandardScaler: population
standard deviation, near-constant columns scaled by 1), then combines the standardised columns
exactly as ``pyod.models.combination`` does:

- :func:`average` (optionally weighted), :func:`maximization`, :func:`median`;
- :func:`aom` (average of bucket maxima) and :func:`moa` (maximum of bucket averages).

:class:`Ensemble` is a detector built on them: it fits its members, standardises their scores
with the training mean and deviation and combines them.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _core
from ._errors import InvalidInputError, NotFittedError
from ._validation import numeric_array
from .base import BaseDetector

__all__ = ["standardize", "average", "maximization", "median", "aom", "moa", "Ensemble"]

_METHODS = ("average", "maximization", "median", "aom", "moa")


def _score_matrix(S, name: str = "S") -> np.ndarray:
    arr = numeric_array(S, name)
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} must be 2-dimensional (rows x detectors), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(f"{name} must have at least one row and one column, got shape {arr.shape}")
    arr = np.asarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise InvalidInputError(f"{name} contains NaN or infinity at row {bad[0]}, column {bad[1]}")
    return arr


def _column_stats(S: np.ndarray):
    """Per-column mean and scale as StandardScaler computes them (near-constant -> 1)."""
    k = S.shape[1]
    mean = np.empty(k)
    scale = np.empty(k)
    n = S.shape[0]
    eps = np.finfo(np.float64).eps
    F = np.asfortranarray(S)
    for j in range(k):
        _, m, sd, _, _ = _core.score_moments(F[:, j], 1)
        var = sd * sd
        # scikit-learn's _is_constant_feature: the variance is below the rounding error bound
        # of its own computation, so the column is constant up to rounding.
        constant = var <= n * eps * var + (n * m * eps) ** 2
        mean[j] = m
        scale[j] = 1.0 if constant else sd
    return mean, scale


def _apply_stats(S: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    # StandardScaler.transform's own two operations, so only the statistics can differ (by ulps).
    return (S - mean) / scale


def standardize(S, S_test=None):
    """Z-score each column of S, as ``pyod.utils.utility.standardizer(S, S_test)``.

    Parameters
    ----------
    S : array-like of shape (n, k)
        Raw scores, one column per detector; the statistics come from it.
    S_test : array-like of shape (m, k), optional
        Scores transformed with S's statistics.

    Returns
    -------
    Z or (Z, Z_test) : ndarrays
    """
    S = _score_matrix(S)
    mean, scale = _column_stats(S)
    Z = _apply_stats(S, mean, scale)
    if S_test is None:
        return Z
    T = _score_matrix(S_test, "S_test")
    if T.shape[1] != S.shape[1]:
        raise InvalidInputError(f"S has {S.shape[1]} columns but S_test has {T.shape[1]}; they must match")
    return Z, _apply_stats(T, mean, scale)


# -- combining standardised columns (pyod.models.combination / combo.models.score_comb) ---------
def _average(Z: np.ndarray, weights=None) -> np.ndarray:
    if weights is None:
        return np.mean(Z, axis=1).ravel()
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w.reshape(1, -1)
    if w.shape != (1, Z.shape[1]):
        raise InvalidInputError(f"weights must have shape ({Z.shape[1]},) or (1, {Z.shape[1]}), got {np.shape(weights)}")
    return (np.sum(np.multiply(Z, w), axis=1) / np.sum(w)).ravel()


def _check_random_state(seed):
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.RandomState(seed)
    if isinstance(seed, np.random.RandomState):
        return seed
    raise InvalidInputError(f"random_state must be None, an int or a numpy RandomState, got {seed!r}")


def _buckets(k: int, n_buckets, method: str, bootstrap_estimators: bool, random_state) -> list:
    """Column indices of each bucket, drawn as combo's _aom_moa_helper draws them."""
    if isinstance(n_buckets, bool) or not isinstance(n_buckets, numbers.Integral) or not (2 <= n_buckets <= k):
        raise InvalidInputError(f"n_buckets must be an integer in [2, {k}] (the number of detectors), got {n_buckets!r}")
    n_buckets = int(n_buckets)
    if method == "static":
        per = int(k / n_buckets)
        if k % n_buckets != 0:
            raise InvalidInputError(
                f"{k} detectors cannot be split into {n_buckets} equal buckets (method='static'); "
                "choose n_buckets dividing the number of detectors, or method='dynamic'"
            )
        if not bootstrap_estimators:
            rs = _check_random_state(random_state)
            order = np.arange(k)
            rs.shuffle(order)  # what sklearn.utils.shuffle does to list(range(k))
            return [order[b * per:(b + 1) * per] for b in range(n_buckets)]
        from sklearn.utils.random import sample_without_replacement  # same draws as PyOD

        return [sample_without_replacement(k, per, random_state=random_state) for _ in range(n_buckets)]
    if method == "dynamic":
        if k < 5:
            raise InvalidInputError(f"method='dynamic' needs at least 5 detectors (bucket sizes 2 .. k/2), got {k}")
        from sklearn.utils.random import sample_without_replacement

        out = []
        for _ in range(n_buckets):
            size = np.random.RandomState(seed=random_state).randint(2, int(k / 2))
            out.append(sample_without_replacement(k, size, random_state=random_state))
        return out
    raise InvalidInputError(f"method must be 'static' or 'dynamic', got {method!r}")


def _bucketed(Z: np.ndarray, buckets: list, mode: str) -> np.ndarray:
    cols = np.zeros([Z.shape[0], len(buckets)])
    for b, idx in enumerate(buckets):
        sub = Z[:, idx]
        cols[:, b] = np.max(sub, axis=1) if mode == "aom" else np.mean(sub, axis=1)
    return np.mean(cols, axis=1) if mode == "aom" else np.max(cols, axis=1)


def average(S, weights=None) -> np.ndarray:
    """Mean of the standardised columns (weighted when ``weights`` of length k is given).

    Equal to ``pyod.models.combination.average(standardizer(S), weights)``.
    """
    return _average(standardize(S), weights)


def maximization(S) -> np.ndarray:
    """Maximum of the standardised columns, as ``pyod.models.combination.maximization``."""
    return np.max(standardize(S), axis=1).ravel()


def median(S) -> np.ndarray:
    """Median of the standardised columns, as ``pyod.models.combination.median``."""
    return np.median(standardize(S), axis=1).ravel()


def aom(S, n_buckets: int = 5, method: str = "static", bootstrap_estimators: bool = False, random_state=None):
    """Average of Maximum: split the k detectors into buckets, take each bucket's maximum, average them.

    Buckets are drawn exactly as ``pyod.models.combination.aom`` draws them (a shuffle for
    ``method="static"``; scikit-learn's sampler, imported on use, for bootstrap or "dynamic"),
    so the same ``random_state`` gives the same result.

    Parameters
    ----------
    S : array-like of shape (n, k)
        Raw scores, one column per detector.
    n_buckets : int in [2, k]
        Must divide k for method="static".
    method : {"static", "dynamic"}
    bootstrap_estimators : bool
    random_state : None, int or numpy RandomState
    """
    Z = standardize(S)
    return _bucketed(Z, _buckets(Z.shape[1], n_buckets, method, bootstrap_estimators, random_state), "aom")


def moa(S, n_buckets: int = 5, method: str = "static", bootstrap_estimators: bool = False, random_state=None):
    """Maximum of Average: each bucket's mean, then the maximum over buckets (see :func:`aom`)."""
    Z = standardize(S)
    return _bucketed(Z, _buckets(Z.shape[1], n_buckets, method, bootstrap_estimators, random_state), "moa")


class Ensemble(BaseDetector):
    """A detector combining the standardised scores of several detectors.

    Parameters
    ----------
    detectors : list of detectors
        Unfitted (or fitted: they are copied and refitted) pynomaly detectors; each must set
        ``decision_scores_`` when fitted.
    method : {"average", "maximization", "median", "aom", "moa"}, default "average"
    contamination : float in (0, 0.5], default 0.1
    weights : array-like of shape (k,), optional
        Detector weights for method="average".
    n_buckets, bucket_method, bootstrap_estimators, random_state
        For "aom" / "moa" (see :func:`aom`). Buckets are drawn once, at fit, so training and
        new scores are combined the same way.

    Attributes
    ----------
    detectors_ : list
        The fitted members.
    mean_, scale_ : ndarrays of shape (k,)
        Standardisation of each member's scores, from its training scores.
    decision_scores_, threshold_, labels_
        As every detector.
    """

    def __init__(
        self,
        detectors=None,
        method: str = "average",
        contamination: float = 0.1,
        weights=None,
        n_buckets: int = 5,
        bucket_method: str = "static",
        bootstrap_estimators: bool = False,
        random_state=None,
    ):
        self.detectors = detectors
        self.method = method
        self.contamination = contamination
        self.weights = weights
        self.n_buckets = n_buckets
        self.bucket_method = bucket_method
        self.bootstrap_estimators = bootstrap_estimators
        self.random_state = random_state

    def fit(self, X, y=None) -> "Ensemble":
        """Fit every member on X, standardise and combine their training scores."""
        if self.method not in _METHODS:
            raise InvalidInputError(f"method must be one of {list(_METHODS)}, got {self.method!r}")
        members = list(self.detectors or [])
        if not members:
            raise InvalidInputError("an Ensemble needs at least one detector")
        for d in members:
            if not isinstance(d, BaseDetector):
                raise InvalidInputError(f"every member must be a pynomaly detector, got {type(d).__name__}")
        X = self._fit_input(X)
        fitted = [type(d)(**d.get_params()).fit(X) for d in members]
        columns = []
        for d in fitted:
            if getattr(d, "decision_scores_", None) is None:
                raise InvalidInputError(f"{type(d).__name__} did not set decision_scores_ when fitted")
            columns.append(np.asarray(d.decision_scores_, dtype=np.float64))
        S = _score_matrix(np.column_stack(columns), "member training scores")
        self.mean_, self.scale_ = _column_stats(S)
        if self.method in ("aom", "moa"):
            self._buckets = _buckets(S.shape[1], self.n_buckets, self.bucket_method, self.bootstrap_estimators,
                                     self.random_state)
        self.detectors_ = fitted
        self.n_features_in_ = X.shape[1]
        self.decision_scores_ = self._combine(_apply_stats(S, self.mean_, self.scale_))
        self._process_decision_scores()
        return self

    def decision_function(self, X) -> np.ndarray:
        """Combined standardised score of each row of X (higher = more anomalous)."""
        if not hasattr(self, "detectors_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        X = self._score_input(X)
        S = np.column_stack([np.asarray(d.decision_function(X), dtype=np.float64) for d in self.detectors_])
        return self._combine(_apply_stats(_score_matrix(S, "member scores"), self.mean_, self.scale_))

    def _combine(self, Z: np.ndarray) -> np.ndarray:
        if self.method == "average":
            return _average(Z, self.weights)
        if self.method == "maximization":
            return np.max(Z, axis=1).ravel()
        if self.method == "median":
            return np.median(Z, axis=1).ravel()
        return _bucketed(Z, self._buckets, self.method)
