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
"""

from __future__ import annotations

import inspect

import numpy as np

from . import scores as _scores
from ._errors import InvalidInputError, NotFittedError
from ._validation import check_contamination


class BaseDetector:
    """Base class of the detectors (not used directly).

    ``threshold`` (default None) is a decision setting, not a constructor parameter: set it,
    after or before fit, to label scores above a fixed value instead of a contamination rate.
    Setting ``contamination`` again returns to rate-based thresholds. Being no constructor
    parameter, it is not part of ``get_params`` (so ``sklearn.base.clone`` keeps working and does
    not copy it) nor of ``to_bytes`` (which stores ``threshold_`` itself).
    """

    threshold = None

    def __init__(self, contamination: float = 0.1):
        self.contamination = contamination

    # -- decisions that follow their parameters --------------------------------------------
    def __setattr__(self, name, value):
        if name == "decision_scores_":
            self.__dict__.pop("_score_cache", None)
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
                self.labels_ = (scores > t).astype(np.int64)
            return
        c = check_contamination(value if name == "contamination" else self.contamination)
        if scores is None:
            raise InvalidInputError(
                f"this {type(self).__name__} has no training scores (decision_scores_ is None, e.g. imported "
                "from scikit-learn), so a contamination rate cannot be turned into a threshold; set "
                "`threshold` to a score instead"
            )
        object.__setattr__(self, name, value)
        if name == "contamination":
            self.__dict__.pop("threshold", None)  # back to rate-based decisions
        self.threshold_ = _scores.threshold(scores, c)
        self.labels_ = (scores > self.threshold_).astype(np.int64)

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

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- PyOD's contract -----------------------------------------------------------------
    def check_fit(self, n_rows: int, n_features: int) -> None:
        """Check, before any work, what a ``fit`` on data of this shape can check: the
        parameters, and where a detector can estimate it, the memory the fit would need.
        Raises InvalidInputError; ``fit`` makes the same checks itself."""
        check_contamination(self.contamination)

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
        labels = (scores > self.threshold_).astype(np.int64)
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
        if self.threshold is None:
            contam = check_contamination(self.contamination)
        else:  # PyOD's rule when the threshold does not come from a rate: the labelled share
            contam = float(np.sum(self.labels_)) / len(self.labels_)
        return _scores.confidence(scores, ref, contam, self.threshold_)

    def _check_fitted(self):
        if not hasattr(self, "threshold_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    def _process_decision_scores(self) -> None:
        """Derive threshold_ and labels_ from decision_scores_ and contamination (PyOD's rule).

        The threshold equals ``np.percentile(decision_scores_, 100 * (1 - contamination))``
        bit for bit (native O(n) selection), or the explicit ``threshold`` when one is set.
        """
        scores = self.decision_scores_
        if self.threshold is not None:
            self.threshold_ = _check_threshold(self.threshold)
        else:
            self.threshold_ = _scores.threshold(scores, check_contamination(self.contamination))
        self.labels_ = (scores > self.threshold_).astype(np.int64)


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
