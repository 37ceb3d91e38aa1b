"""What every pynomaly detector shares: PyOD's conventions and scikit-learn's parameter API.

- ``__init__`` only stores keyword arguments; ``get_params``/``set_params`` read them from the
  signature, so ``sklearn.base.clone``, ``GridSearchCV`` and ``Pipeline`` work.
- ``fit(X)`` returns ``self`` and sets ``decision_scores_`` (scores of the training rows),
  ``threshold_`` (the ``1 - contamination`` percentile of those scores) and ``labels_``.
- ``decision_function(X)`` is higher for more anomalous rows; ``predict(X)`` is 0/1.
- ``predict_proba``, ``predict_confidence`` and ``predict(..., return_confidence=True)`` turn
  scores into probabilities and confidences as PyOD defines them (pynomaly.scores).
- Decisions follow the parameters after fit: assigning ``contamination`` (or an explicit
  ``threshold``), directly or with ``set_params``, re-derives ``threshold_`` and ``labels_``
  from ``decision_scores_`` without refitting.
- ``contamination="auto"`` (scikit-learn's default) is a fixed threshold on the score scale
  where the detector defines one (IsolationForest: 0.5, LOF: 1.5), as scikit-learn's offset_.
- scikit-learn sees an outlier detector (``__sklearn_tags__``, without importing scikit-learn
  until it asks), so Pipeline, GridSearchCV, cross_val_score and clone accept every detector.
  ``predict`` stays 0/1 as in PyOD, not scikit-learn's +1/-1.
- Fitted on a DataFrame with string column names, a detector keeps them in
  ``feature_names_in_`` and scores a DataFrame by name: the same columns in another order are
  put back in the fitted order, missing or unknown columns are refused. Plain arrays are read
  by position.
"""

from __future__ import annotations

import inspect

import numpy as np

from pynomaly.estimators import explain as _explain
from pynomaly.estimators import scores as _scores
from pynomaly._errors import InvalidInputError, NotFittedError
from pynomaly.domain import flagged
from pynomaly.estimators._validation import as_matrix, check_contamination, feature_names


_OWN = object()  # "the detector's own contamination" (None is a value to refuse)


class BaseDetector:
    """Base class of the detectors (not used directly).

    ``threshold`` (default None) is a decision setting, not a constructor parameter: set it,
    after or before fit, to label scores above a fixed value instead of a contamination rate.
    Setting ``contamination`` again returns to rate-based thresholds. Being no constructor
    parameter, it is not part of ``get_params`` (so ``sklearn.base.clone`` keeps working and does
    not copy it) nor of ``to_bytes`` (which stores ``threshold_`` itself).
    """

    threshold = None
    # What scikit-learn < 1.6 reads instead of tags (sklearn.base.is_outlier_detector).
    _estimator_type = "outlier_detector"
    # The threshold contamination="auto" stands for, on this detector's score scale (None:
    # "auto" is refused, the detector has no score with a fixed meaning).
    _auto_threshold = None

    def __init__(self, contamination: float = 0.1):
        self.contamination = contamination

    # -- decisions that follow their parameters --------------------------------------------
    def __setattr__(self, name, value):
        if name == "decision_scores_":
            # A fresh, empty cache rather than none: filling it later (predict_proba) then does
            # not change the detector's __dict__, which scikit-learn checks.
            object.__setattr__(self, "_score_cache", {})
        elif name in ("contamination", "threshold") and "threshold_" in self.__dict__:
            self._redecide(name, value)
            return
        object.__setattr__(self, name, value)

    def _redecide(self, name, value) -> None:
        """Re-derive threshold_ and labels_ of a fitted detector for a new contamination/threshold.

        Validates first, so a rejected value leaves the detector unchanged.
        """
        scores = self.__dict__.get("decision_scores_")
        if name == "threshold" and value is not None:
            t = _check_threshold(value)
            object.__setattr__(self, "threshold", value)
            self.threshold_ = t
            if scores is not None:
                self.labels_ = flagged(scores, t).astype(np.int64)
            return
        c = self._rate(value if name == "contamination" else self.contamination)
        if scores is None and c is not None:
            raise InvalidInputError(
                f"this {type(self).__name__} has no training scores (decision_scores_ is None, e.g. imported "
                "from scikit-learn), so a contamination rate cannot be turned into a threshold; set "
                "`threshold` to a score instead"
            )
        object.__setattr__(self, name, value)
        if name == "contamination":
            self.__dict__.pop("threshold", None)  # back to rate-based decisions
        self.threshold_ = self._auto_threshold if c is None else _scores.threshold(scores, c)
        if scores is not None:
            self.labels_ = flagged(scores, self.threshold_).astype(np.int64)

    def _rate(self, contamination=_OWN) -> "float | None":
        """The checked contamination rate (this detector's, or the value given), or None for
        "auto" where this detector defines it."""
        c = self.contamination if contamination is _OWN else contamination
        if isinstance(c, str) and c == "auto":
            if self._auto_threshold is None:
                raise InvalidInputError(
                    f"contamination='auto' is not defined for {type(self).__name__} (its scores have no fixed scale "
                    "to cut at); give a rate in (0, 0.5], or set threshold to a score"
                )
            return None
        return check_contamination(c)

    # -- the parameter API (scikit-learn's contract) ---------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict:
        """Parameters given to ``__init__`` (``deep`` is accepted for scikit-learn)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "BaseDetector":
        """Set parameters by name; unknown names raise InvalidInputError.

        Besides the constructor's parameters, ``threshold`` (a fixed decision threshold, or
        None for the contamination rate) is accepted. On a fitted detector, ``contamination``
        and ``threshold`` take effect at once (``threshold_`` and ``labels_`` are re-derived).
        """
        valid = set(self._param_names()) | {"threshold"}
        for name, value in params.items():
            if name not in valid:
                raise InvalidInputError(
                    f"{type(self).__name__} has no parameter {name!r}; valid parameters: {sorted(valid)}"
                )
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self):
        """scikit-learn's (>= 1.6) description of this estimator: an outlier detector.

        Only scikit-learn calls it, so scikit-learn is imported here and never by ``import
        pynomaly``; the tags are those ``BaseEstimator`` + ``OutlierMixin`` would give.
        """
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type="outlier_detector", target_tags=TargetTags(required=False),
                    transformer_tags=None, regressor_tags=None, classifier_tags=None)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- input: the fitted features, by name or by position ---------------------------------
    def _fit_input(self, X) -> np.ndarray:
        """X as a matrix for ``fit``; a DataFrame's string column names become
        ``feature_names_in_`` (and those of an earlier fit are forgotten otherwise). A detector
        explained by the model-agnostic method keeps a small sample of the rows (``_background``)."""
        names = feature_names(X)
        X = as_matrix(X)
        if self._keeps_background:
            self._background = _explain.background_sample(X)
        if names is None:
            self.__dict__.pop("feature_names_in_", None)
        else:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        return X

    def _score_input(self, X) -> np.ndarray:
        """X as a matrix for scoring: a DataFrame's columns taken by name in the fitted order,
        then the number of features checked."""
        X = as_matrix(self._in_fitted_order(X))
        self._check_n_features(X.shape[1])
        return X

    def _check_n_features(self, d: int) -> None:
        want = self.__dict__.get("n_features_in_")
        if want is not None and d != want:
            raise InvalidInputError(
                f"X has {d} features, but {type(self).__name__} is expecting {want} features as input"
            )

    def _in_fitted_order(self, X):
        """X with its columns in the order of ``feature_names_in_``.

        Reordering (not refusing, as scikit-learn does) because a column's name says what it
        holds: the same names in another order have one meaning, and the CLI selects CSV
        columns by name the same way. Missing, unknown or repeated names are refused; data
        without names (arrays, integer column labels) is read by position.
        """
        fitted = self.__dict__.get("feature_names_in_")
        names = feature_names(X)
        if fitted is None or names is None:
            return X
        fitted = list(fitted)
        if names == fitted:
            return X
        missing = [c for c in fitted if c not in names]
        unknown = [c for c in names if c not in fitted]
        if missing or unknown or len(set(names)) != len(names):
            detail = "; ".join(part for part in (
                f"missing {missing}" if missing else "",
                f"not seen at fit {unknown}" if unknown else "",
                "repeated names" if len(set(names)) != len(names) and not (missing or unknown) else "",
            ) if part)
            raise InvalidInputError(
                f"X's column names do not match those {type(self).__name__} was fitted with ({detail}); "
                f"expected the columns {fitted}, in any order, or a plain array in that order"
            )
        return X[fitted]

    # -- explanations ----------------------------------------------------------------------
    # Method -> the outputs it can add up to; the first method and the first output are the
    # defaults. Detectors with exact methods list them first and override _explain.
    _explain_methods = {"permutation": ("score",)}
    _keeps_background = True  # False where an exact method makes the background unneeded
    _explain_chunk = 4096  # rows per call of _explain: memory stays bounded, as in scoring

    def explain(self, X, method=None, output=None, *, background=None) -> "_explain.Explanation":
        """Why each row of X scores as it does: per-feature attributions (see
        :mod:`pynomaly.estimators.explain` for every detector's methods and outputs).

        Parameters
        ----------
        X : array-like of shape (n, d)
        method : str or None
            None: the detector's default (the first of ``_explain_methods``). Every detector
            offers "permutation", the model-agnostic Shapley estimate (see
            :func:`pynomaly.estimators.explain.permutation_shapley`), against ``background``
            or the sample of training rows kept at fit.
        output : str or None
            What values plus base add up to; None: the method's default.
        background : array-like of shape (m, d), optional
            Rows the "permutation" method measures against, instead of the kept sample
            (required where the detector keeps none: a user's detector, an IsolationForest).

        Returns
        -------
        Explanation
            ``values`` (n, d) float64 and ``base_values`` (n,) with ``values.sum(1) + base_values``
            equal to ``output`` per row. Results do not depend on ``n_jobs``.
        """
        self._check_fitted()
        method, output = _explain.check_request(type(self).__name__, self._explain_methods, method, output)
        X = self._score_input(X)
        if background is not None:
            background = self._score_input(background)
        n, d = X.shape
        step = self._explain_rows_per_chunk(method, d)
        if 0 < n <= step:  # one chunk (a served request's rows): no copies of the parts
            values, base = self._explain(X, method, output, background)
        else:
            parts = [self._explain(X[a:a + step], method, output, background)
                     for a in range(0, n, step)] or [(np.zeros((0, d)), np.zeros(0))]
            values, base = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return _explain.Explanation(values=values, base_values=base, feature_names=_explain.feature_names_of(self, d),
                                    output=output, method=method, data=np.asarray(X, dtype=np.float64))

    def _explain_checked_rows(self, X, method) -> "_explain.Explanation":
        """``explain(X, method)`` of rows a serving face has checked already (a 2-D float array
        of the fitted width, scored just before): the data plane's one call per request.
        Detectors with a cheaper entry for a few rows override it, with the same result."""
        return self.explain(X, method)

    def _explain_rows_per_chunk(self, method: str, d: int) -> int:
        return self._explain_chunk

    def _explain(self, X, method: str, output: str, background) -> tuple:
        """``(values, base_values)`` of rows X (at most ``_explain_chunk``) for a checked request."""
        if method != "permutation":  # pragma: no cover - a detector listing a method implements it
            raise NotImplementedError(method)
        if background is None:
            background = self._explain_background()
        return _explain.permutation_shapley(self.decision_function, X, background)

    def _explain_background(self) -> np.ndarray:
        background = self.__dict__.get("_background")
        if background is None:
            raise InvalidInputError(
                f"this {type(self).__name__} keeps no sample of its training rows, which method='permutation' "
                "measures against: pass background=<some training rows>"
            )
        return background

    # -- PyOD's contract -----------------------------------------------------------------
    def check_fit(self, n_rows: int, n_features: int) -> None:
        """Check, before any work, what a ``fit`` on data of this shape can check: the
        parameters, and where a detector can estimate it, the memory the fit would need.
        Raises InvalidInputError; ``fit`` makes the same checks itself."""
        self._rate()

    def fit(self, X, y=None):  # pragma: no cover - every detector overrides it
        raise NotImplementedError

    def decision_function(self, X) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def fit_predict(self, X, y=None) -> np.ndarray:
        """Fit on X and return the 0/1 labels of its rows (``labels_``)."""
        return self.fit(X, y).labels_

    def predict(self, X, return_confidence: bool = False):
        """1 for rows scoring above ``threshold_`` (anomalies), else 0, as an int array.

        With ``return_confidence=True`` also returns the ExCeeD confidence of each label
        (see :meth:`predict_confidence`), from the same scores.
        """
        scores = self.decision_function(X)
        labels = flagged(scores, self._decision_threshold()).astype(np.int64)
        if return_confidence:
            return labels, self._confidence_of(scores)
        return labels

    def predict_proba(self, X, method: str = "linear", return_confidence: bool = False):
        """Probability of each row being normal / an outlier, shape (n, 2), as PyOD defines it.

        Parameters
        ----------
        X : array-like of shape (n, d)
        method : {"linear", "unify"}
            "linear": the training scores' min-max scaling clipped to [0, 1] (bit-equal to
            PyOD's); "unify": ``max(0, erf((s - mean) / (std * sqrt(2))))`` with the training
            scores' mean and standard deviation (Kriegel et al. 2011).
        return_confidence : bool
            Also return the ExCeeD confidence of each prediction.

        Returns
        -------
        probs : ndarray of shape (n, 2)
            Column 1 is the outlier probability, column 0 is one minus it.
        confidence : ndarray of shape (n,), only with ``return_confidence=True``
        """
        if method not in ("linear", "unify"):
            raise InvalidInputError(f"method must be 'linear' or 'unify', got {method!r}")
        self._check_fitted()
        stats = self._training_stats("predict_proba")
        scores = self.decision_function(X)
        p = _scores.proba(scores, stats, method)
        probs = np.empty((p.shape[0], 2))
        probs[:, 1] = p
        probs[:, 0] = 1 - p
        if return_confidence:
            return probs, self._confidence_of(scores)
        return probs

    def predict_confidence(self, X) -> np.ndarray:
        """ExCeeD confidence (Perini et al. 2020) of each prediction, in [0, 1], as PyOD computes it.

        How consistently the detector would give the same label if its training set were
        slightly different. Needs SciPy (imported when called).
        """
        self._check_fitted()
        self._training_stats("predict_confidence")
        return self._confidence_of(self.decision_function(X))

    def predict_with_rejection(self, X, T: float = 32, return_stats: bool = False, delta: float = 0.1,
                               c_fp: float = 1, c_fn: float = 1, c_r: float = -1):
        """0/1 labels, with -2 for the predictions not confident enough to keep, as PyOD defines it.

        A label is rejected when its ExCeeD confidence, mapped to ``2 |conf - 0.5|``, is at or
        below ``1 - 2 exp(-T)`` (Perini and Davis 2023). PyOD's signature and result.

        Parameters
        ----------
        X : array-like of shape (n, d)
        T : float, default 32
            Higher rejects more.
        return_stats : bool
            Also return ``[expected rejection rate, its upper bound, upper bound of the cost]``.
        delta : float in (0, 1), default 0.1
            The rejection-rate bound holds with probability ``1 - delta``.
        c_fp, c_fn, c_r : float
            Costs of a false positive, a false negative and a rejection (``c_r`` negative:
            the contamination rate).

        Unlike PyOD, out-of-range ``delta`` or a negative ``c_r`` with ``return_stats`` do not
        warn and substitute a value: a negative ``c_r`` means the contamination rate (PyOD's
        default) and a ``delta`` outside (0, 1) is refused.
        """
        self._check_fitted()
        self._training_stats("predict_with_rejection")
        if not (0 < delta < 1):
            raise InvalidInputError(f"delta must be in (0, 1), got {delta!r}")
        scores = self.decision_function(X)
        labels = flagged(scores, self._decision_threshold()).astype(np.int64)
        confidence = self._confidence_of(scores)
        confidence = np.where(labels == 0, 1 - confidence, confidence)
        self.rejection_threshold_ = 1 - 2 * np.exp(-T)
        labels[2 * np.abs(confidence - 0.5) <= self.rejection_threshold_] = -2
        if not return_stats:
            return labels
        return labels, self._rejection_stats(T, delta, c_fp, c_fn, c_r)

    def _rejection_stats(self, T, delta, c_fp, c_fn, c_r) -> list:
        """PyOD's ``compute_rejection_stats``: expected rejection rate, its upper bound (with
        probability 1 - delta) and the upper bound of the cost, from n and the rate."""
        from scipy.optimize import root_scalar
        from scipy.stats import binom

        gamma = self._labelled_rate()
        c_r = gamma if c_r < 0 else c_r
        n = len(self._training_scores("predict_with_rejection"))
        k = int(n * gamma) - 1

        def root(C):
            return root_scalar(lambda p: binom.cdf(k, n, p) - C, bracket=[0, 1], method="brentq").root

        q1, q2 = root(1 - np.exp(-T)), root(np.exp(-T))
        right = min(1, (-gamma * (n + 2) + n + 1) / n + (T * (n + 2)) / np.sqrt(2 * n**3 * T))
        left = max(0, (2 + n * (1 - gamma) * (n + 1)) / n**2 - np.sqrt(
            0.5 * n**5 * (2 * n * (-3 * gamma**2 - 2 * n * (1 - gamma) ** 2 + 4 * gamma - 3) + T * (n + 2) ** 2 - 8)
        ) / n**4)
        upper_rate = right - left + 2 * np.sqrt(np.log(2 / delta) / (2 * n))
        upper_cost = min(gamma, q1) * c_fp + min(1 - q2, gamma) * c_fn + (q2 - q1) * c_r
        return [q2 - q1, upper_rate, upper_cost]

    def score_with_confidence(self, X, method: str = "linear"):
        """Normalised outlier score in [0, 1] and its ExCeeD confidence per row, from one scoring pass.

        The pair behind a per-row ``AnomalyScore(value, confidence)``: ``value`` is column 1 of
        ``predict_proba(X, method)`` and ``confidence`` is ``predict_confidence(X)``.

        Returns
        -------
        value, confidence : ndarrays of shape (n,)
        """
        if method not in ("linear", "unify"):
            raise InvalidInputError(f"method must be 'linear' or 'unify', got {method!r}")
        self._check_fitted()
        stats = self._training_stats("score_with_confidence")
        scores = self.decision_function(X)
        return _scores.proba(scores, stats, method), self._confidence_of(scores)

    def memory_bytes(self) -> int:
        """Bytes this fitted detector holds in memory (its arrays; native detectors add their
        core structures): what a server caching it is charged."""
        total = 0
        for value in self.__dict__.values():
            if isinstance(value, np.ndarray):
                total += value.nbytes
            elif isinstance(value, dict):  # the cached training-score statistics
                total += sum(v.nbytes for v in value.values() if isinstance(v, np.ndarray))
        return total

    def confidence_of(self, scores) -> np.ndarray:
        """ExCeeD confidence of the labels of scores already computed by ``decision_function``
        (what :meth:`predict_confidence` gives, without scoring again)."""
        return self._confidence_of(np.asarray(scores, dtype=np.float64))

    # -- cached statistics of the training scores ------------------------------------------
    def _score_cache_get(self) -> dict:
        cache = self.__dict__.get("_score_cache")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_score_cache", cache)
        return cache

    def _training_scores(self, what: str) -> np.ndarray:
        scores = getattr(self, "decision_scores_", None)
        if scores is None:
            raise NotFittedError(
                f"{what} needs the training scores (decision_scores_), which this {type(self).__name__} "
                "does not have (e.g. it was imported from scikit-learn); fit it, or import it from PyOD"
            )
        return scores

    def _training_stats(self, what: str) -> "_scores.ScoreStats":
        cache = self._score_cache_get()
        if "stats" not in cache:
            cache["stats"] = _scores.describe(self._training_scores(what))
        return cache["stats"]

    def _sorted_training_scores(self) -> np.ndarray:
        cache = self._score_cache_get()
        if "sorted" not in cache:
            cache["sorted"] = _scores.sort_scores(self._training_scores("predict_confidence"))
        return cache["sorted"]

    def _confidence_of(self, scores: np.ndarray) -> np.ndarray:
        self._check_fitted()
        ref = self._sorted_training_scores()
        return _scores.confidence(scores, ref, self._labelled_rate(), self._decision_threshold())

    def _labelled_rate(self) -> float:
        """The contamination rate, or, where the threshold does not come from a rate (an explicit
        threshold, "auto"), PyOD's rule: the share of training rows labelled anomalous."""
        rate = None if self.threshold is not None else self._rate()
        if rate is None:
            return float(np.sum(self.labels_)) / len(self.labels_)
        return rate

    def _check_fitted(self):
        if not hasattr(self, "threshold_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    def _decision_threshold(self) -> float:
        """``threshold_``, for what decides; a model loaded without one (a forest written before
        its threshold was known) scores but does not decide until given one."""
        self._check_fitted()
        if self.threshold_ is None:
            raise NotFittedError(
                f"this {type(self).__name__} has no threshold (it was written before one was derived, e.g. "
                "shipped for scoring only): it scores (decision_function) but cannot label rows; set "
                "threshold=SCORE, or contamination= where it has training scores"
            )
        return self.threshold_

    def _process_decision_scores(self) -> None:
        """Derive threshold_ and labels_ from decision_scores_ and contamination (PyOD's rule).

        The threshold equals ``np.percentile(decision_scores_, 100 * (1 - contamination))``
        bit for bit (native O(n) selection), the explicit ``threshold`` when one is set, or
        the detector's fixed threshold for ``contamination="auto"``.
        """
        scores = self.decision_scores_
        if self.threshold is not None:
            self.threshold_ = _check_threshold(self.threshold)
        else:
            rate = self._rate()
            self.threshold_ = self._auto_threshold if rate is None else _scores.threshold(scores, rate)
        self.labels_ = flagged(scores, self.threshold_).astype(np.int64)


def _check_threshold(value) -> float:
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise InvalidInputError(f"threshold must be a finite number (or None for the contamination rate), got {value!r}")
    return float(value)


class PickleAsBytes:
    """Pickle a native detector through its own ``to_bytes``/``from_bytes`` format, so a pickle
    holds no pickled arrays or native objects. ``_fitted_marker`` names the attribute that
    exists once the detector is fitted; an unfitted detector pickles its parameters only."""

    _fitted_marker = ""

    def __getstate__(self):
        state = {"params": self.get_params()}
        if hasattr(self, self._fitted_marker):
            state["model"] = self.to_bytes()
        return state

    def __setstate__(self, state):
        if "model" in state:
            self.__dict__.update(type(self).from_bytes(state["model"]).__dict__)
        else:
            self.set_params(**state["params"])


def available_memory() -> "int | None":
    """Bytes of memory the system can still give this process (Linux MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(need: int, what: str, advice: str) -> None:
    """Refuse a fit whose estimated memory ``need`` exceeds what is available, saying both."""
    have = available_memory()
    if have is not None and need > have:
        raise InvalidInputError(
            f"{what} needs about {_human(need)} of memory; {_human(have)} are available: {advice}"
        )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover
