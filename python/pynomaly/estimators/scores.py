"""From raw anomaly scores to numbers a person can act on.

Every function here runs in the native core (``cpp/scores.cpp``) with the GIL released; results
do not depend on ``n_jobs`` or on the SIMD target. Transforms are *fitted* on training scores
(a detector's ``decision_scores_``) and *applied* to new scores:

- :func:`linear` - min-max scaling clipped to [0, 1] (PyOD's ``predict_proba(method="linear")``);
- :func:`unify` - Gaussian scaling ``max(0, erf((s - mean) / (std * sqrt(2))))`` (Kriegel et al.
  2011; PyOD's ``method="unify"``);
- :func:`zscore` - ``(s - mean) / std``;
- :func:`ecdf` - share of training scores ``<=`` each score;
- :func:`confidence` - ExCeeD (Perini et al. 2020), as PyOD's ``predict_confidence``.

:func:`threshold` gives the decision threshold for a contamination rate, equal to
``np.percentile(scores, 100 * (1 - contamination))`` bit for bit but found by O(n) selection.

NaN in *new* scores gives NaN out; NaN in *training* scores is an error (statistics of them
would be meaningless). Constant training scores never divide by zero: see each function.
"""

from __future__ import annotations

import numpy as np

from pynomaly import _core
from pynomaly._errors import InvalidInputError
from pynomaly.estimators._validation import check_contamination, numeric_array, resolve_n_jobs
from pynomaly.domain import ScoreStats, flagged  # plain values and the rule: the domain states them

__all__ = [
    "ScoreStats",
    "describe",
    "linear",
    "unify",
    "zscore",
    "ecdf",
    "ecdf_count",
    "sort_scores",
    "threshold",
    "percentile",
    "confidence",
    "proba",
]


def _vector(scores, name: str = "scores") -> np.ndarray:
    if type(scores) is np.ndarray and scores.dtype == np.float64 and scores.ndim == 1:
        return scores
    arr = numeric_array(scores, name)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.ravel()  # PyOD-style column vectors
    if arr.ndim != 1:
        raise InvalidInputError(f"{name} must be 1-dimensional (one score per row), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _jobs(n_jobs) -> int:
    return resolve_n_jobs(n_jobs)


def _stats(train, n_jobs) -> ScoreStats:
    return train if isinstance(train, ScoreStats) else describe(train, n_jobs=n_jobs)


def describe(train, *, n_jobs=None) -> ScoreStats:
    """Mean, standard deviation, minimum and maximum of training scores in one native pass.

    The mean and standard deviation are accumulated per block and merged with Chan et al.'s
    update, so they are accurate (no ``E[x^2] - E[x]^2`` cancellation) and agree with
    ``np.mean`` / ``np.std`` to a few ulp.

    Parameters
    ----------
    train : array-like of shape (n,)
        Finite training scores (n >= 1).
    n_jobs : None or int
        Threads (None = 1, -1 = all CPUs).

    Returns
    -------
    ScoreStats

    Raises
    ------
    InvalidInputError
        Empty input, or a NaN / infinite score (its index is named).
    """
    n, mean, std, lo, hi = _core.score_moments(_vector(train, "training scores"), _jobs(n_jobs))
    return ScoreStats(int(n), float(mean), float(std), float(lo), float(hi))


def linear(scores, train, *, out=None, n_jobs=None) -> np.ndarray:
    """Min-max scale scores to the training range and clip to [0, 1].

    Computed exactly as scikit-learn's ``MinMaxScaler`` fitted on the training scores followed by
    ``clip(0, 1)``, which is PyOD's ``predict_proba(method="linear")``; results are bit-equal.
    Constant training scores (range below 10 eps) use a range of 1, as scikit-learn does.

    Parameters
    ----------
    scores : array-like of shape (m,)
        Scores to transform; NaN stays NaN.
    train : ScoreStats or array-like of shape (n,)
        The training scores, or their :func:`describe` summary.
    out : ndarray of float64, optional
        Where to write the result (may be ``scores`` itself if it is a float64 array).
    n_jobs : None or int

    Returns
    -------
    ndarray of shape (m,)
    """
    st = _stats(train, n_jobs)
    return _core.minmax_scale(_vector(scores), st.min, st.max, _jobs(n_jobs), out)


def unify(scores, train, *, out=None, n_jobs=None) -> np.ndarray:
    """Gaussian scaling of scores: ``max(0, erf((s - mean) / (std * sqrt(2))))`` in [0, 1].

    Kriegel et al. (2011), "Interpreting and unifying outlier scores"; this is PyOD's
    ``predict_proba(method="unify")``. erf is evaluated by a piecewise polynomial with absolute
    error below 1e-15. When the training scores are constant (std 0) the Gaussian degenerates
    to a step: 1 above the mean, 0 otherwise.

    Parameters
    ----------
    scores : array-like of shape (m,)
        Scores to transform; NaN stays NaN.
    train : ScoreStats or array-like of shape (n,)
    out : ndarray of float64, optional
    n_jobs : None or int

    Returns
    -------
    ndarray of shape (m,)
    """
    st = _stats(train, n_jobs)
    return _core.unify(_vector(scores), st.mean, st.std, _jobs(n_jobs), out)


def zscore(scores, train, *, out=None, n_jobs=None) -> np.ndarray:
    """Standardise scores with the training mean and standard deviation.

    A standard deviation below 10 eps (constant training scores) counts as 1, as in
    scikit-learn's scalers, so the result is ``s - mean``.

    Parameters
    ----------
    scores : array-like of shape (m,)
    train : ScoreStats or array-like of shape (n,)
    out : ndarray of float64, optional
    n_jobs : None or int

    Returns
    -------
    ndarray of shape (m,)
    """
    st = _stats(train, n_jobs)
    return _core.zscore(_vector(scores), st.mean, st.std, _jobs(n_jobs), out)


def sort_scores(train, *, n_jobs=None) -> np.ndarray:
    """Sorted copy of training scores, the fitted state of :func:`ecdf` and :func:`confidence`.

    Raises InvalidInputError for empty input or NaN.
    """
    return _core.sorted_scores(_vector(train, "training scores"), _jobs(n_jobs))


def ecdf_count(scores, sorted_train, *, n_jobs=None) -> np.ndarray:
    """Number of training scores ``<=`` each score (int64; -1 for NaN), by binary search.

    Equal to ``np.searchsorted(sorted_train, scores, side="right")`` and to PyOD's
    ``np.count_nonzero(decision_scores_ <= s)``, in O(m log n) instead of O(m n).

    Parameters
    ----------
    scores : array-like of shape (m,)
    sorted_train : ndarray of shape (n,)
        Training scores sorted ascending (see :func:`sort_scores`); not checked.
    n_jobs : None or int
    """
    ref = _vector(sorted_train, "sorted training scores")
    if ref.size == 0:
        raise InvalidInputError("the empirical CDF needs at least one training score")
    return _core.ecdf_count(ref, _vector(scores), _jobs(n_jobs))


def ecdf(scores, sorted_train, *, n_jobs=None) -> np.ndarray:
    """Empirical CDF of the training scores at each score: ``ecdf_count / n`` in [0, 1]; NaN for NaN."""
    ref = _vector(sorted_train, "sorted training scores")
    if ref.size == 0:
        raise InvalidInputError("the empirical CDF needs at least one training score")
    return _core.ecdf(ref, _vector(scores), _jobs(n_jobs))


def percentile(scores, q: float, *, n_jobs=None) -> float:
    """``np.percentile(scores, q)`` (linear interpolation), bit-equal, by O(n) selection.

    Parameters
    ----------
    scores : array-like of shape (n,)
        n >= 1 scores without NaN (NumPy would return NaN, a threshold that labels nothing).
    q : float in [0, 100]
    n_jobs : None or int

    Raises
    ------
    InvalidInputError
        Empty scores, NaN (its index is named) or q outside [0, 100].
    """
    return float(_core.percentile(_vector(scores), float(q), _jobs(n_jobs)))


def threshold(scores, contamination: float, *, n_jobs=None) -> float:
    """Decision threshold for a contamination rate, as PyOD sets ``threshold_``.

    Equal bit for bit to ``np.percentile(scores, 100 * (1 - contamination))``; scores strictly
    above it are labelled anomalies.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Training scores (no NaN).
    contamination : float in (0, 0.5]
    n_jobs : None or int
    """
    c = check_contamination(contamination)
    return float(_core.contamination_threshold(_vector(scores), c, _jobs(n_jobs)))


def confidence(scores, sorted_train, contamination: float, threshold: float, *, n_jobs=None) -> np.ndarray:
    """ExCeeD confidence of each prediction (Perini et al. 2020), as PyOD computes it.

    With n training scores and k of them ``<=`` the score, the outlier probability is
    ``(1 + k) / (2 + n)`` and the confidence that the prediction would stay the same under a
    slightly different training set is ``1 - binom.cdf(n - int(n * contamination), n, p)`` for
    predicted anomalies (score > threshold) and one minus that for predicted inliers.

    Needs SciPy (imported here, only when called) for the binomial CDF; the counts come from a
    native binary search, so the cost is O(m log n) instead of PyOD's O(m n).

    Parameters
    ----------
    scores : array-like of shape (m,)
    sorted_train : ndarray of shape (n,)
        Training scores sorted ascending (:func:`sort_scores`).
    contamination : float in (0, 1)
        The rate the threshold stands for (PyOD uses the share of training labels when the
        threshold was not set from a rate).
    threshold : float
    n_jobs : None or int

    Returns
    -------
    ndarray of shape (m,) in [0, 1]
    """
    try:
        from scipy.stats import binom
    except ImportError as e:  # pragma: no cover - SciPy comes with every supported stack
        raise ImportError("predict_confidence needs SciPy for the binomial CDF: pip install scipy") from e
    s = _vector(scores)
    counts = ecdf_count(s, sorted_train, n_jobs=n_jobs)
    if np.any(counts < 0):
        raise InvalidInputError(f"scores contain NaN at index {int(np.argmax(counts < 0))}; no confidence for NaN")
    n = int(np.asarray(sorted_train).size)
    # The confidence depends on the count only: evaluate the binomial once per distinct count.
    uniq, inverse = np.unique(counts, return_inverse=True)
    posterior = (1 + uniq) / (2 + n)
    conf = (1 - binom.cdf(n - int(n * contamination), n, posterior))[inverse.reshape(-1)]
    inlier = ~flagged(s, threshold)
    conf[inlier] = 1 - conf[inlier]
    return conf


def proba(scores, train, method: str = "linear", *, n_jobs=None) -> np.ndarray:
    """Outlier probability in [0, 1] per score: :func:`linear` or :func:`unify` by name.

    Raises InvalidInputError for another method name.
    """
    if method == "linear":
        return linear(scores, train, n_jobs=n_jobs)
    if method == "unify":
        return unify(scores, train, n_jobs=n_jobs)
    raise InvalidInputError(f"method must be 'linear' or 'unify', got {method!r}")
