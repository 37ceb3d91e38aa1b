"""One way to detect: a detector version loaded for scoring (:class:`Scorer`) and what turns
its scores into a :class:`~pynomaly.DetectionResult` (labels by the rule,
:func:`pynomaly.domain.flagged`; probabilities, confidence), for every face. The service
layer builds Scorers (``service.load_for_scoring``) and re-exports these names; faces use them
as ``service.Scorer``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np

from pynomaly._errors import InvalidInputError
from pynomaly.estimators._validation import as_matrix
from pynomaly.domain import ContaminationRate, DetectionResult, DetectorNotReadyError, DetectorVersion, flagged

__all__ = ["Scorer", "WANT_ALL", "WANT_DEFAULT"]

# What a detection can return besides the threshold; scores and labels unless asked otherwise.
WANT_ALL = ("scores", "labels", "probabilities", "confidence", "anomalies", "attributions")
WANT_DEFAULT = ("scores", "labels")
_F64 = np.dtype(np.float64)


class Scorer:
    """A detector version loaded for scoring: the version as a value, the model, and the rule.

    Attributes
    ----------
    version : DetectorVersion
        Name, version, algorithm, features, threshold and training statistics (frozen).
    model : fitted detector
        Any registry kind (native, PyOD, torch, JAX).
    native : pynomaly._core.ServedForest or None
        For a native isolation forest, the typed object the daemon's native path scores with
        (same forest, threshold, name and version); None for every other kind.

    Build one with :func:`load_for_scoring`, :func:`load_file_for_scoring` or
    :meth:`Scorer.of` (for a model in hand); keep it and call :meth:`detect` per batch.
    """

    __slots__ = ("version", "model", "native", "learns", "_size")

    def __init__(self, version: DetectorVersion, model):
        if not hasattr(model, "threshold_"):
            raise DetectorNotReadyError(f"detector {version.name!r} v{version.version} is not trained")
        self.version = version
        self.model = model
        serving = getattr(model, "serving_handle", None)
        self.native = serving(version.name, version.version) if serving is not None else None
        # A streaming detector (pynomaly.stream): served one request at a time, and may learn.
        self.learns = hasattr(model, "score_learn_many")
        self._size = None

    @classmethod
    def of(cls, model, name: str, version: int = 1, *, algorithm: Optional[str] = None, feature_names=None,
           detector_id: Optional[str] = None, status: Optional[str] = None) -> "Scorer":
        """A Scorer for a fitted model in hand (``algorithm`` defaults to its class name)."""
        stats = None
        train_scores = getattr(model, "decision_scores_", None)
        if train_scores is not None and len(train_scores):
            from pynomaly.estimators import scores as _scores

            stats = _scores.describe(train_scores)
        contamination = getattr(model, "contamination", None)
        if getattr(model, "threshold", None) is not None or not isinstance(contamination, (int, float)):
            contamination = None
        value = DetectorVersion(
            name=name,
            version=version,
            algorithm=algorithm or type(model).__name__,
            n_features=int(model.n_features_in_),
            threshold=float(model.threshold_),
            feature_names=feature_names,
            training_stats=stats,
            contamination=contamination,
            detector_id=detector_id,
            status=status,
        )
        return cls(value, model)

    @property
    def size_bytes(self) -> int:
        """Memory the loaded model holds (its ``memory_bytes()``; for a model without it, its
        stored form's size); computed once. What a cache of Scorers is charged."""
        if self._size is None:
            measure = getattr(self.model, "memory_bytes", None)
            try:
                size = measure() if measure is not None else 0
                if getattr(self.model, "artifact_format", "native") != "native" or measure is None:
                    # torch/JAX weights and PyOD's model live outside our arrays: count their
                    # stored form as a floor.
                    size += len(self.model.to_bytes())
            except Exception:  # noqa: BLE001 - a model that cannot say or serialize: size unknown
                size = 0
            self._size = int(size)
        return self._size

    @property
    def rows_independent(self) -> bool:
        """Whether a row's score depends on that row alone (and the fitted model), so that a
        batch may be scored in blocks and the scores joined: true of the native detectors
        (isolation forest, LOF's and KNN's novelty scores). Faces use it to score rows while
        the rest of a large request is still arriving."""
        return getattr(self.model, "artifact_format", "native") == "native"

    def score(self, X) -> np.ndarray:
        """Anomaly scores of the rows of X (float64, higher is more anomalous).

        X must have the version's number of features; other checks (NaN, dtype) are the
        model's, with its messages.
        """
        v = self.version
        if X.ndim != 2 or X.shape[1] != v.n_features:  # inline: a call costs the hot path
            self._check_features(X)
        scores = self.model.decision_function(X)
        if type(scores) is not np.ndarray or scores.dtype is not _F64:  # `is`: half the cost of `!=` per request
            scores = np.asarray(scores, dtype=np.float64)
        return scores

    def _check_features(self, X) -> None:
        v = self.version
        if X.ndim != 2 or X.shape[1] != v.n_features:
            raise InvalidInputError(
                f"data has {X.shape[1] if X.ndim == 2 else '?'} features; detector {v.name!r} v{v.version} "
                f"was trained on {v.n_features}" + (f" ({', '.join(v.feature_names)})" if v.feature_names else "")
            )

    def threshold_for(self, scores: np.ndarray, *, threshold=None, contamination=None) -> float:
        """The decision threshold: ``threshold``, else the ``contamination`` quantile of these
        scores (equal to ``np.percentile``), else the version's own."""
        if threshold is not None and contamination is not None:
            raise InvalidInputError("give either threshold or contamination, not both")
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or not np.isfinite(threshold):
                raise InvalidInputError(f"threshold must be a finite number, got {threshold!r}")
            return float(threshold)
        if contamination is not None:
            from pynomaly.estimators import scores as _scores

            return _scores.threshold(scores, ContaminationRate(contamination).value)
        return self.version.threshold

    def labels(self, scores: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
        """The rows above the threshold (the version's own unless given), by the one rule
        (:func:`pynomaly.domain.flagged`). A bool array."""
        return flagged(scores, self.version.threshold if threshold is None else threshold)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Outlier probability of each score: PyOD's 'linear' scaling of the training scores
        (``predict_proba(X)[:, 1]``). Raises DetectorNotReadyError without training scores."""
        stats = self.version.training_stats
        if stats is None:
            v = self.version
            raise DetectorNotReadyError(f"detector {v.name!r} v{v.version} has no training scores to scale probabilities")
        from pynomaly.estimators import scores as _scores

        return _scores.linear(scores, stats)

    def explain(self, X, method: Optional[str] = None):
        """The detector's :class:`~pynomaly.estimators.explain.Explanation` of the rows of X
        (``model.explain(X, method)``; None: the detector's default method), with the
        version's feature names. InvalidInputError for a method the detector does not offer;
        DetectorNotReadyError for a model that cannot explain at all."""
        v = self.version
        explain = getattr(self.model, "explain", None)
        if explain is None:
            raise DetectorNotReadyError(f"detector {v.name!r} v{v.version} ({v.algorithm}) cannot explain its scores")
        if method is not None and not isinstance(method, str):
            raise InvalidInputError(f"explain_method must be a method name (a string) or absent, got {method!r}")
        self._check_features(X)
        checked = getattr(self.model, "_explain_checked_rows", None)  # a pynomaly detector's cheap entry
        explanation = explain(X, method=method) if checked is None else checked(X, method)
        names = v.feature_names
        if names and len(names) == X.shape[1] and tuple(explanation.feature_names) != names:
            # the stored names (a CSV header) over generated ones
            explanation = dataclasses.replace(explanation, feature_names=list(names))
        return explanation

    def decide(self, scores: np.ndarray, want=WANT_DEFAULT, *, threshold=None, contamination=None,
               dataset_id=None, started: Optional[float] = None, explanation=None) -> DetectionResult:
        """The :class:`~pynomaly.DetectionResult` of these scores: labels by the rule at
        :meth:`threshold_for`, and ``probabilities`` and ``confidence`` (the model's ExCeeD
        confidence) when ``want`` names them (see :data:`WANT_ALL`); ``attributions`` from
        ``explanation`` (of the same rows, :meth:`explain`) when given. ``started``: the
        ``time.perf_counter()`` reading its processing time counts from."""
        t = self.threshold_for(scores, threshold=threshold, contamination=contamination)
        labels = flagged(scores, t).astype(np.int64)
        probabilities = confidence = None
        if "probabilities" in want:
            probabilities = self.probabilities(scores)
        if "confidence" in want:
            confidence_of = getattr(self.model, "confidence_of", None)
            if confidence_of is None:
                raise DetectorNotReadyError(f"detector {self.version.name!r} cannot give confidences")
            confidence = confidence_of(scores)
        return DetectionResult(
            detector_id=self.version.detector_id or self.version.name,
            detector_version=self.version.version,
            dataset_id=dataset_id,
            threshold=t,
            scores=scores,
            labels=labels,
            processing_time_ms=0.0 if started is None else 1e3 * (time.perf_counter() - started),
            probabilities=probabilities,
            confidence=confidence,
            explanation=explanation,
        )

    def detect(self, X, want=WANT_DEFAULT, *, threshold=None, contamination=None, dataset_id=None,
               explain_method: Optional[str] = None) -> DetectionResult:
        """Score X and return a :class:`~pynomaly.DetectionResult` with what ``want`` names
        (scores and labels always; ``probabilities``, ``confidence`` and ``attributions`` when
        asked for; attributions by ``explain_method``, None: the detector's default)."""
        unknown = [w for w in want if w not in WANT_ALL]
        if unknown:
            raise InvalidInputError(f"want must name some of {list(WANT_ALL)}, got {list(want)!r}")
        if explain_method is not None and "attributions" not in want:
            raise InvalidInputError("explain_method applies to attributions; add 'attributions' to want")
        X = as_matrix(X)
        t0 = time.perf_counter()
        scores = self.score(X)
        explanation = self.explain(X, explain_method) if "attributions" in want else None
        return self.decide(scores, want, threshold=threshold, contamination=contamination,
                           dataset_id=dataset_id, started=t0, explanation=explanation)
