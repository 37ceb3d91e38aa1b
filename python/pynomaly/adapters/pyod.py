"""Any installed PyOD detector behind pynomaly's contract (registry names ``pyod.<ClassName>``).

PyOD models can only be persisted with pickle, so ``artifact_format`` is ``"pickle"``: the
repository signs such artifacts with an HMAC and refuses any whose signature does not match.
``pyod.IForest`` with ``use_native=True`` trains PyOD's forest and scores it with the native
one (``pynomaly.IsolationForest.from_pyod``), which gives the same labels, much faster.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import pickle
import pkgutil
import re

import numpy as np

from .._errors import InvalidInputError, NotFittedError
from ..base import BaseDetector
from . import require

__all__ = ["PyODDetector", "pyod_class"]


def pyod_class(name: str):
    """The PyOD detector class called ``name`` (e.g. "ECOD", "AutoEncoder"), imported lazily.

    Raises MissingExtraError without PyOD and InvalidInputError for an unknown name.
    """
    models = require("pyod.models", "pyod")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
        raise InvalidInputError(f"{name!r} is not a PyOD class name (e.g. 'IForest', 'ECOD', 'LOF')")
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    tried = []
    # Module names follow the class name in nearly every case; scan the rest only if not.
    candidates = [name.lower(), snake] + [m.name for m in pkgutil.iter_modules(models.__path__)]
    for mod_name in dict.fromkeys(candidates):
        if mod_name.startswith("_") or mod_name in tried:
            continue
        tried.append(mod_name)
        try:
            # Some PyOD modules print "please install torch first" when their optional
            # dependency is missing: that is PyOD's noise, not a message for our users.
            with contextlib.redirect_stdout(io.StringIO()):
                mod = importlib.import_module(f"pyod.models.{mod_name}")
        except Exception:  # some PyOD modules need libraries that are not installed
            continue
        cls = getattr(mod, name, None)
        if isinstance(cls, type) and hasattr(cls, "decision_function") and hasattr(cls, "fit"):
            return cls
    raise InvalidInputError(f"PyOD has no detector class {name!r} (or its dependencies are missing)")


class PyODDetector(BaseDetector):
    """A PyOD detector wrapped with pynomaly's contract.

    Parameters
    ----------
    model : str, default "IForest"
        PyOD class name.
    params : dict or None
        Keyword arguments for the PyOD class (``contamination`` is given separately).
    contamination : float, default 0.1
    use_native : bool, default False
        Only for "IForest": score with pynomaly's native forest converted from PyOD's.
    """

    artifact_format = "pickle"

    def __init__(self, model: str = "IForest", params=None, contamination: float = 0.1, use_native: bool = False):
        self.model = model
        self.params = params
        self.contamination = contamination
        self.use_native = use_native

    def fit(self, X, y=None) -> "PyODDetector":
        """Fit the PyOD model on X; ``decision_scores_``, ``threshold_``, ``labels_`` follow PyOD's."""
        c = self._rate()
        if self.use_native and self.model != "IForest":
            raise InvalidInputError(f"use_native is only available for PyOD's IForest, not {self.model!r}")
        X = self._fit_input(X)
        cls = pyod_class(self.model)
        params = dict(self.params or {})
        if "contamination" in params:
            raise InvalidInputError("give contamination as PyODDetector(contamination=...), not inside params")
        try:
            est = cls(contamination=c, **params)
        except TypeError as e:
            raise InvalidInputError(f"bad parameters for pyod {self.model}: {e}") from None
        est.fit(X)
        self.model_ = est
        self.n_features_in_ = X.shape[1]
        if self.use_native:
            from ..iforest import IsolationForest

            self.native_ = IsolationForest.from_pyod(est)
            self.decision_scores_ = self.native_.decision_scores_
            self.threshold_ = self.native_.threshold_
            self.labels_ = self.native_.labels_
        else:
            self.native_ = None
            self.decision_scores_ = np.asarray(est.decision_scores_, dtype=np.float64)
            self.threshold_ = float(est.threshold_)
            self.labels_ = np.asarray(est.labels_, dtype=np.int64)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores of X (higher = more anomalous), from PyOD or the native forest."""
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        X = self._score_input(X)
        if self.native_ is not None:
            return self.native_.decision_function(X)
        return np.asarray(self.model_.decision_function(X), dtype=np.float64)

    def to_bytes(self) -> bytes:
        """Pickle of the fitted detector (the only way PyOD models can be saved)."""
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        return pickle.dumps(self, protocol=5)

    @classmethod
    def from_bytes(cls, data) -> "PyODDetector":
        """Unpickle bytes written by :meth:`to_bytes`. Only for bytes you trust: the repository
        calls it after checking the artifact's HMAC signature."""
        require("pyod", "pyod")
        obj = pickle.loads(bytes(data))
        if not isinstance(obj, cls):
            raise InvalidInputError(f"artifact holds a {type(obj).__name__}, not a {cls.__name__}")
        return obj
