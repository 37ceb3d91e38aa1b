"""What every pynomaly detector shares: PyOD's conventions and scikit-learn's parameter API.

- ``__init__`` only stores keyword arguments; ``get_params``/``set_params`` read them from the
  signature, so ``sklearn.base.clone``, ``GridSearchCV`` and ``Pipeline`` work.
- ``fit(X)`` returns ``self`` and sets ``decision_scores_`` (scores of the training rows),
  ``threshold_`` (the ``1 - contamination`` percentile of those scores) and ``labels_``.
- ``decision_function(X)`` is higher for more anomalous rows; ``predict(X)`` is 0/1.
"""

from __future__ import annotations

import inspect

import numpy as np

from ._errors import InvalidInputError, NotFittedError
from ._validation import check_contamination


class BaseDetector:
    """Base class of the detectors (not used directly)."""

    def __init__(self, contamination: float = 0.1):
        self.contamination = contamination

    # -- the parameter API (scikit-learn's contract) ---------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict:
        """Parameters given to ``__init__`` (``deep`` is accepted for scikit-learn)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "BaseDetector":
        """Set parameters by name; unknown names raise InvalidInputError."""
        valid = set(self._param_names())
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
    def fit(self, X, y=None):  # pragma: no cover - every detector overrides it
        raise NotImplementedError

    def decision_function(self, X) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def fit_predict(self, X, y=None) -> np.ndarray:
        """Fit on X and return the 0/1 labels of its rows (``labels_``)."""
        return self.fit(X, y).labels_

    def predict(self, X) -> np.ndarray:
        """1 for rows scoring above ``threshold_`` (anomalies), else 0, as an int array."""
        scores = self.decision_function(X)
        return (scores > self.threshold_).astype(np.int64)

    def _check_fitted(self):
        if not hasattr(self, "threshold_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    def _process_decision_scores(self) -> None:
        """Derive threshold_ and labels_ from decision_scores_ and contamination (PyOD's rule)."""
        c = check_contamination(self.contamination)
        self.threshold_ = float(np.percentile(self.decision_scores_, 100.0 * (1.0 - c)))
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)

    # -- predict_proba (added with the adapters, issue 5) -----------------------------------
    def predict_proba(self, X, method: str = "linear") -> np.ndarray:
        """Probability of each row being an outlier, as PyOD computes it: shape (n, 2).

        ``method="linear"`` scales scores by the training scores' min and max (clipped to
        [0, 1]); ``"unify"`` applies the Gaussian error function to standardized scores
        (Kriegel et al. 2011). Column 1 is the outlier probability.
        """
        self._check_fitted()
        train = getattr(self, "decision_scores_", None)
        if train is None:
            raise NotFittedError(f"predict_proba needs the training scores, which this {type(self).__name__} lacks")
        scores = np.asarray(self.decision_function(X), dtype=np.float64)
        train = np.asarray(train, dtype=np.float64)
        if method == "linear":
            lo, hi = float(train.min()), float(train.max())
            p = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
            p = np.clip(p, 0.0, 1.0)
        elif method == "unify":
            from math import erf, sqrt

            mu, sd = float(train.mean()), float(train.std())
            z = (scores - mu) / (sd * sqrt(2.0)) if sd > 0 else np.zeros_like(scores)
            p = np.clip(np.vectorize(erf, otypes=[np.float64])(z), 0.0, 1.0) if z.size else z
        else:
            raise InvalidInputError(f"method must be 'linear' or 'unify', got {method!r}")
        return np.column_stack([1.0 - p, p])
