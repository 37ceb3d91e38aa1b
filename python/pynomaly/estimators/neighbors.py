"""Exact k-nearest neighbours (:func:`knn`) and the detectors built on it: :class:`LOF` and :class:`KNN`.

The search runs in the native core (cpp/knn.cpp): float32-screened brute force with exact
float64 verification, or a KD-tree at low dimension. Neighbour sets are the true ones, ties go
to the lower index, and results do not depend on ``n_jobs``.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from pynomaly.estimators import _format
from pynomaly import _core
from pynomaly._errors import InvalidInputError, ModelFormatError, NotFittedError
from pynomaly.estimators._validation import as_matrix, resolve_n_jobs
from pynomaly.estimators.base import BaseDetector, PickleAsBytes, check_memory
from pynomaly.estimators.explain import background_sample, check_additive_metric, neighbor_shares

__all__ = ["knn", "choose_algorithm", "LOF", "KNN"]

_METRICS = ("euclidean", "sqeuclidean", "manhattan", "cosine")
_ALGORITHMS = ("auto", "brute", "kd_tree")


def _check_k(k, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InvalidInputError(f"{name} must be a positive integer, got {k!r}")
    if k < 1:
        raise InvalidInputError(f"{name} must be at least 1, got {k!r}")
    return int(k)


def _check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _search(X, k: int, Y, metric: str, algorithm: str, n_jobs: int):
    """(distances, indices, algorithm used) from the core; X and Y already validated."""
    if Y is not None and Y.shape[1] != X.shape[1]:
        raise InvalidInputError(
            f"Y has {Y.shape[1]} features but X has {X.shape[1]}; both must have the same number of features"
        )
    return _core.knn(X, k, Y, metric, algorithm, n_jobs)


def knn(X, k, Y=None, metric="euclidean", algorithm="auto", n_jobs=None):
    """Exact k nearest neighbours.

    Parameters
    ----------
    X : array-like of shape (n, d)
        The rows searched (float32 and float64 arrays of any layout are read in place).
    k : int
        Neighbours per query, 1 <= k <= n (k <= n - 1 when Y is None).
    Y : array-like of shape (m, d), optional
        The queries. None queries X itself, excluding each row from its own neighbours
        (scikit-learn's ``kneighbors()`` without arguments).
    metric : {"euclidean", "sqeuclidean", "manhattan", "cosine"}
    algorithm : {"auto", "brute", "kd_tree"}
        "auto" picks by n, d and metric (see :func:`choose_algorithm`).
    n_jobs : None or int
        Threads: None means 1, -1 every usable CPU. Results do not depend on it.

    Returns
    -------
    distances : ndarray of float64, shape (m, k)
        Each row ascending; exact (computed directly in float64).
    indices : ndarray of int64, shape (m, k)
        Rows of X; among equal distances the lower index comes first.
    """
    X = as_matrix(X)
    if Y is not None:
        Y = as_matrix(Y, name="Y")
    k = _check_k(k)
    metric = _check_choice(metric, "metric", _METRICS)
    algorithm = _check_choice(algorithm, "algorithm", _ALGORITHMS)
    dist, idx, _ = _search(X, k, Y, metric, algorithm, resolve_n_jobs(n_jobs))
    return dist, idx


def choose_algorithm(n: int, d: int, metric: str = "euclidean") -> str:
    """The algorithm ``algorithm="auto"`` uses for n rows of d features ("brute" or "kd_tree")."""
    return _core.knn_choose_algorithm(int(n), int(d), _check_choice(metric, "metric", _METRICS))


class _NeighborDetector(PickleAsBytes, BaseDetector):
    """Shared fitting state of LOF and KNN: the training rows and the parameter checks."""

    _fitted_marker = "_fit_X"
    _kind = b""
    _what = ""
    _explain_methods = {"neighbors": ("score",), "permutation": ("score",)}
    _keeps_background = False  # the training rows are kept anyway: the background is drawn from them

    def _check_params(self):
        self._rate()
        k = _check_k(self.n_neighbors, "n_neighbors")
        _check_choice(self.metric, "metric", _METRICS)
        _check_choice(self.algorithm, "algorithm", _ALGORITHMS)
        return k, resolve_n_jobs(self.n_jobs)

    def check_fit(self, n_rows: int, n_features: int) -> None:
        """See :meth:`BaseDetector.check_fit`: parameters, rows, and the neighbour lists' memory."""
        k, _ = self._check_params()
        n = int(n_rows)
        if n < 2:
            raise InvalidInputError(
                f"X has {n} row (n_samples={n}); {type(self).__name__} needs at least 2 rows "
                "(each row's neighbours exclude itself)"
            )
        k = min(k, n - 1)
        # A copy of the rows, then distances and indices of k neighbours per row (twice at the
        # peak, while the scores are derived).
        check_memory(n * (8 * int(n_features) + 32 * k), f"{type(self).__name__} on {n} rows with n_neighbors={k}",
                     "use fewer rows or a smaller n_neighbors")

    def _fit_neighbors(self, X):
        k, n_jobs = self._check_params()
        X = self._fit_input(X)
        n = X.shape[0]
        self.check_fit(n, X.shape[1])
        if k >= n:
            # scikit-learn's LocalOutlierFactor caps the same way (and with these words).
            warnings.warn(
                f"n_neighbors ({k}) is greater than or equal to the total number of samples ({n}). "
                f"n_neighbors will be set to (n_samples - 1) = {n - 1} for estimation.",
                UserWarning,
                stacklevel=3,
            )
        # Our own copy: the model must not change when the caller later edits X in place.
        self._fit_X = np.array(X, order="C", copy=True)
        self.n_features_in_ = X.shape[1]
        self.n_neighbors_ = min(k, n - 1)
        dist, idx, self.algorithm_ = _search(self._fit_X, self.n_neighbors_, None, self.metric, self.algorithm, n_jobs)
        return dist, idx

    def _query(self, X):
        try:
            fit_X = self._fit_X
        except AttributeError:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first") from None
        X = self._score_input(X)
        _, n_jobs = self._check_params()
        algorithm = self.algorithm
        if algorithm == "auto" and X.shape[0] < 1024:
            # A tree is rebuilt per call (it is not kept); for a few rows a scan is cheaper.
            algorithm = "brute"
        dist, idx, _ = _search(fit_X, self.n_neighbors_, X, self.metric, algorithm, n_jobs)
        return dist, idx

    # -- serialization -------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialize the fitted detector (format: see ``pynomaly._format``); no pickle inside."""
        from pynomaly.estimators._format import dump_neighbors

        if not hasattr(self, "_fit_X"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        return dump_neighbors(self, self._kind)

    @classmethod
    def from_bytes(cls, data):
        """Load a detector written by ``to_bytes``; corrupted or truncated data raise ModelFormatError."""
        from pynomaly.estimators._format import load_neighbors

        model = load_neighbors(cls, data, cls._kind, cls._what)
        try:
            model._check_loaded()
        except InvalidInputError as e:
            raise ModelFormatError(f"model header is invalid: {e}") from None
        # Not stored: fit's rule gives it back from the parameters and the rows.
        model.n_neighbors_ = min(_check_k(model.n_neighbors, "n_neighbors"), model._fit_X.shape[0] - 1)
        return model

    def _check_loaded(self) -> None:
        """The parameters of a loaded detector that the shared checks (_check_params) leave out."""

    def _explain_background(self) -> np.ndarray:
        return background_sample(self._fit_X)

    def _explain_rows_per_chunk(self, method: str, d: int) -> int:
        # The shares are (rows, k, d) float64: about 16 MB per chunk whatever k and d are.
        return max(1, min(self._explain_chunk, 2_000_000 // max(1, self.n_neighbors_ * d)))

    def _neighbor_shares(self, X):
        """(shares (n, k, d), distances (n, k), indices (n, k)) of X's neighbours: each feature's
        share of each distance (see :func:`pynomaly.estimators.explain.neighbor_shares`)."""
        check_additive_metric(self.metric)
        dist, idx = self._query(X)
        return neighbor_shares(np.asarray(X, dtype=np.float64), self._fit_X, idx, dist, self.metric), dist, idx


def _lrd(dist: np.ndarray, idx: np.ndarray, kdist: np.ndarray) -> np.ndarray:
    # scikit-learn's _local_reachability_density, term for term (including the 1e-10 guard
    # that keeps rows with k exact duplicates finite); one n x k temporary, reused in place.
    reach = kdist[idx]
    np.maximum(dist, reach, out=reach)
    return 1.0 / (np.mean(reach, axis=1) + 1e-10)


def _mean_ratio(lrd: np.ndarray, idx: np.ndarray, lrd_rows: np.ndarray) -> np.ndarray:
    # mean over neighbours of lrd[neighbour] / lrd[row], as scikit-learn divides then averages.
    ratios = lrd[idx]
    ratios /= lrd_rows[:, np.newaxis]
    return np.mean(ratios, axis=1)


class LOF(_NeighborDetector):
    """Local Outlier Factor (Breunig et al. 2000) with PyOD's conventions.

    Scores follow scikit-learn's definition exactly (k-distance, reachability distance, local
    reachability density with its 1e-10 guard): ``decision_scores_`` equals
    ``-LocalOutlierFactor(n_neighbors).fit(X).negative_outlier_factor_``.

    Parameters
    ----------
    n_neighbors : int, default 20
        k; capped at the number of training rows - 1, with a warning (as scikit-learn does).
    metric : {"euclidean", "sqeuclidean", "manhattan", "cosine"}, default "euclidean"
    algorithm : {"auto", "brute", "kd_tree"}, default "auto"
    novelty : bool, default False
        As in scikit-learn: False (outlier detection) scores only the training rows
        (``decision_scores_``, ``labels_``); ``decision_function``/``predict`` on data then
        raise. True (novelty detection) scores new rows against the training rows:
        ``decision_function(X)`` equals ``-LocalOutlierFactor(novelty=True).score_samples(X)``.
    contamination : float or "auto", default 0.1
        "auto" is scikit-learn's fixed threshold: a LOF above 1.5 is an anomaly
        (``LocalOutlierFactor(contamination="auto").offset_ == -1.5``).
    n_jobs : None or int

    Attributes
    ----------
    decision_scores_, threshold_, labels_ : PyOD's meaning (higher score = more anomalous)
    algorithm_ : str
        The neighbour search used ("brute" or "kd_tree").
    n_neighbors_ : int
        The k used: ``n_neighbors`` capped at the number of training rows - 1.
    n_features_in_ : int
    feature_names_in_ : ndarray of str, only when fitted on a DataFrame with string column names

    As scikit-learn, a fit whose largest LOF exceeds 1e7 (k exact duplicates of a row make its
    density near-infinite) warns that duplicates lead to incorrect results.
    """

    _kind = _format.KIND_LOF
    _what = "a LOF detector"
    _auto_threshold = 1.5

    def __init__(
        self,
        n_neighbors: int = 20,
        metric: str = "euclidean",
        algorithm: str = "auto",
        novelty: bool = False,
        contamination: float = 0.1,
        n_jobs=None,
    ):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.algorithm = algorithm
        self.novelty = novelty
        self.contamination = contamination
        self.n_jobs = n_jobs

    def _check_loaded(self) -> None:
        if not isinstance(self.novelty, (bool, np.bool_)):
            raise InvalidInputError(f"novelty must be True or False, got {self.novelty!r}")

    def fit(self, X, y=None) -> "LOF":
        """Find each training row's neighbours and its LOF; ``y`` is ignored."""
        if not isinstance(self.novelty, (bool, np.bool_)):
            raise InvalidInputError(f"novelty must be True or False, got {self.novelty!r}")
        dist, idx = self._fit_neighbors(X)
        self._kdist = dist[:, -1].copy()
        self._lrd = _lrd(dist, idx, self._kdist)
        del dist  # keep the peak at two n x k arrays
        self.decision_scores_ = _mean_ratio(self._lrd, idx, self._lrd)
        if not self.novelty and np.max(self.decision_scores_) > 1e7:
            # scikit-learn's warning, word for word (its condition: negative_outlier_factor_ < -1e7).
            warnings.warn(
                "Duplicate values are leading to incorrect results. "
                "Increase the number of neighbors for more accurate results.",
                UserWarning,
                stacklevel=2,
            )
        self._process_decision_scores()
        return self

    def decision_function(self, X) -> np.ndarray:
        """LOF of each row of X as a new point (novelty=True only); higher is more anomalous."""
        if hasattr(self, "_fit_X") and not self.novelty:
            raise InvalidInputError(
                "LOF(novelty=False) scores only its training rows: read decision_scores_ and labels_, "
                "or fit LOF(novelty=True) to score new data"
            )
        dist, idx = self._query(X)
        lrd_x = _lrd(dist, idx, self._kdist)
        del dist
        return _mean_ratio(self._lrd, idx, lrd_x)

    def explain(self, X, method=None, output=None, *, background=None):
        """Per-feature attributions of each row's LOF (see :meth:`BaseDetector.explain`).

        method="neighbors" (default), for the metrics that are sums over features
        (sqeuclidean, manhattan, and euclidean, each feature's share of the squared distance
        scaled to the distance); cosine is refused. A row's LOF is
        ``mean(lrd of its neighbours) * (mean reachability distance + 1e-10)``, and the
        reachability distance to a neighbour o is ``max(d(x, o), k-distance of o)``. Each
        distance that counts (``d(x, o)`` above o's k-distance) is split into the features'
        shares; the clipped ones (o's k-distance) and the guard go to ``base_values``.

        Exact: values plus base equal ``decision_function(X)`` (to rounding), and each value is
        exactly what that feature's differences contributed to this row's reachability
        distances. Not exact: it is a decomposition at the row's neighbourhood, not a Shapley
        value of LOF as a function of the features; moving a feature can change the neighbour
        set, which of the distances are clipped, and the neighbours' densities, which the
        attributions hold fixed. Like ``decision_function``, it needs ``novelty=True``.
        """
        if hasattr(self, "_fit_X") and not self.novelty:
            raise InvalidInputError(
                "LOF(novelty=False) scores only its training rows, so it cannot explain new rows; fit "
                "LOF(novelty=True) to score and explain new data"
            )
        return super().explain(X, method, output, background=background)

    def _explain(self, X, method, output, background):
        if method == "permutation":
            return super()._explain(X, method, output, background)
        shares, dist, idx = self._neighbor_shares(X)
        k = dist.shape[1]
        scale = np.mean(self._lrd[idx], axis=1) / k  # mean neighbour density over k
        counted = dist > self._kdist[idx]  # reach = d(x, o): its features are credited
        values = np.einsum("nk,nkd->nd", counted.astype(np.float64), shares) * scale[:, None]
        clipped = np.where(counted, 0.0, self._kdist[idx]).sum(axis=1)
        base = scale * clipped + scale * k * 1e-10
        return values, base


class KNN(_NeighborDetector):
    """k-nearest-neighbour distance detector, equal to PyOD's ``pyod.models.knn.KNN``.

    The score of a row is the distance to its k-th neighbour ("largest"), or the mean or
    median of the distances to its k neighbours. Training rows exclude themselves; new rows
    are searched among the training rows (a training row passed again finds itself at 0).

    Parameters
    ----------
    n_neighbors : int, default 5
    method : {"largest", "mean", "median"}, default "largest"
    metric : {"euclidean", "sqeuclidean", "manhattan", "cosine"}, default "euclidean"
    algorithm : {"auto", "brute", "kd_tree"}, default "auto"
    contamination : float, default 0.1
        A rate in (0, 0.5]; "auto" is refused (PyOD's KNN has none: distances have no scale
        that would say where anomalies begin).
    n_jobs : None or int

    Attributes
    ----------
    decision_scores_, threshold_, labels_ : PyOD's meaning (higher score = more anomalous)
    algorithm_ : str
    n_neighbors_ : int
        The k used: ``n_neighbors`` capped at the number of training rows - 1.
    n_features_in_ : int
    feature_names_in_ : ndarray of str, only when fitted on a DataFrame with string column names
    """

    _kind = _format.KIND_KNN
    _what = "a KNN detector"

    def __init__(
        self,
        n_neighbors: int = 5,
        method: str = "largest",
        metric: str = "euclidean",
        algorithm: str = "auto",
        contamination: float = 0.1,
        n_jobs=None,
    ):
        self.n_neighbors = n_neighbors
        self.method = method
        self.metric = metric
        self.algorithm = algorithm
        self.contamination = contamination
        self.n_jobs = n_jobs

    def _reduce(self, dist: np.ndarray) -> np.ndarray:
        if self.method == "largest":
            return dist[:, -1].copy()
        if self.method == "mean":
            return np.mean(dist, axis=1)
        return np.median(dist, axis=1)

    def _check_loaded(self) -> None:
        _check_choice(self.method, "method", ("largest", "mean", "median"))

    def fit(self, X, y=None) -> "KNN":
        """Score each training row by its distances to its k nearest other rows; ``y`` is ignored."""
        _check_choice(self.method, "method", ("largest", "mean", "median"))
        dist, _ = self._fit_neighbors(X)
        self.decision_scores_ = self._reduce(dist)
        self._process_decision_scores()
        return self

    def decision_function(self, X) -> np.ndarray:
        """Score of each row of X against the training rows; higher is more anomalous."""
        _check_choice(self.method, "method", ("largest", "mean", "median"))
        dist, _ = self._query(X)
        return self._reduce(dist)

    def explain(self, X, method=None, output=None, *, background=None):
        """Per-feature attributions of each row's score (see :meth:`BaseDetector.explain`).

        method="neighbors" (default): each feature's exact share of the distances the score is
        made of, for the metrics that are sums over features; cosine is refused. Per metric, a
        feature's share of the distance to one neighbour is its squared difference
        (sqeuclidean), its absolute difference (manhattan), or its squared difference over the
        distance (euclidean: its share of the squared distance, scaled to the distance). Per
        ``method``: "largest" takes the k-th neighbour's shares, "mean" the mean of the k
        neighbours' shares, "median" the middle neighbour's (the mean of the two middle ones for
        even k). Values add up to ``decision_function(X)`` exactly (to rounding); base is 0.
        Ties among neighbours at equal distance go to the lower index, as in scoring.
        """
        return super().explain(X, method, output, background=background)

    def _explain(self, X, method, output, background):
        if method == "permutation":
            return super()._explain(X, method, output, background)
        shares, dist, _ = self._neighbor_shares(X)
        k = dist.shape[1]
        if self.method == "largest":
            values = shares[:, -1].copy()
        elif self.method == "mean":
            values = shares.mean(axis=1)
        elif k % 2:
            values = shares[:, k // 2].copy()
        else:
            values = (shares[:, k // 2 - 1] + shares[:, k // 2]) / 2
        return values, np.zeros(X.shape[0])
