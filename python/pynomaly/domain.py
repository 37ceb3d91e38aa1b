"""The domain model: a detector with a lifecycle, validated value objects, columnar results.

This module depends on nothing else in pynomaly except the error hierarchy, so every layer
(estimators, repository, service, CLI, daemon) may use it.

Lifecycle of a :class:`Detector`::

    CREATED --mark_trained--> TRAINED --activate--> ACTIVE --archive--> ARCHIVED
       |                        ^  |                  |                    |
       +--mark_failed--> FAILED-+  +-----archive------+                    |
                                   ^--mark_trained (retrain: next version)-+ (from TRAINED/ACTIVE)
    ARCHIVED --activate--> ACTIVE  (restore)

Only an ACTIVE detector can detect, and an ACTIVE detector has always been trained (it has a
version >= 1 and ``trained_at``): the invariant is kept by the transitions, so ``can_detect()``
is simply ``status is ACTIVE``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import math
import numbers
import operator
import time
import uuid
from datetime import datetime, timezone
from typing import Optional

import numpy as np

from pynomaly._errors import PynomalyError

__all__ = [
    "NAME_PATTERN",
    "check_name",
    "shown",
    "Detector",
    "DetectorVersion",
    "ScoreStats",
    "DetectorStatus",
    "AnomalyScore",
    "ContaminationRate",
    "DetectionResult",
    "DetectorNotReadyError",
    "InvalidTransitionError",
    "InvalidNameError",
    "fingerprint",
    "flagged",
]


class DetectorNotReadyError(PynomalyError):
    """A detector was asked to detect while it cannot (not trained, not active, archived, failed)."""


class InvalidTransitionError(PynomalyError, ValueError):
    """A lifecycle transition that the detector's current status does not allow."""


class InvalidNameError(PynomalyError, ValueError):
    """A detector name outside :data:`NAME_PATTERN`."""


class DetectorStatus(str, enum.Enum):
    """Where a detector is in its lifecycle (stored as the lower-case value)."""

    CREATED = "created"
    TRAINED = "trained"
    ACTIVE = "active"
    ARCHIVED = "archived"
    FAILED = "failed"


def _now() -> datetime:
    return datetime.now(timezone.utc)


# What a detector name is, everywhere (CLI, service, repository, daemon, model folders): 1 to 128
# characters, letters, digits, '.', '_' and '-', starting with a letter or digit. Safe as a file
# name, in a log line and in a URL path; documented in README.md and PROTOCOL.md.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME = __import__("re").compile(NAME_PATTERN)


def shown(text, limit: int = 40) -> str:
    """Client- or user-supplied text as it may appear in a message or log: a short escaped
    prefix (``repr``), with its full length when it was cut."""
    if not isinstance(text, str):
        return repr(text)[:limit]
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def check_name(name) -> str:
    """``name`` if it is a valid detector name (see :data:`NAME_PATTERN`), else
    InvalidNameError saying what a name is."""
    if isinstance(name, str) and _NAME.match(name):
        return name
    raise InvalidNameError(
        f"{shown(name)} is not a detector name: names are 1 to 128 characters, letters, digits, "
        "'.', '_' and '-', starting with a letter or digit"
    )


@dataclasses.dataclass
class Detector:
    """A named detector, its parameters and where it is in its lifecycle.

    The fitted model itself is not part of the entity: the repository stores it as an
    artifact per version, and :func:`pynomaly.service.load_for_scoring` returns both.

    Parameters
    ----------
    name : str
        Unique, human-chosen name (the CLI's ``--detector``).
    algorithm : str
        Registry name, e.g. ``"IsolationForest"``, ``"pyod.ECOD"``, ``"TorchAutoEncoder"``.
    parameters : dict
        Keyword arguments given to the algorithm (JSON-able values).
    """

    name: str
    algorithm: str
    parameters: dict = dataclasses.field(default_factory=dict)
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    status: DetectorStatus = DetectorStatus.CREATED
    created_at: datetime = dataclasses.field(default_factory=_now)
    trained_at: Optional[datetime] = None
    version: int = 0  # 0 = never trained; the latest trained version otherwise
    n_features: Optional[int] = None
    feature_names: Optional[list] = None
    data_fingerprint: Optional[str] = None
    error: Optional[str] = None  # why training failed, when FAILED

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidTransitionError(f"a detector needs a non-empty name, got {self.name!r}")
        if not isinstance(self.algorithm, str) or not self.algorithm:
            raise InvalidTransitionError(f"a detector needs an algorithm name, got {self.algorithm!r}")
        self.status = DetectorStatus(self.status)

    # -- queries -------------------------------------------------------------------------
    def can_detect(self) -> bool:
        """True when the detector is ACTIVE (which implies it has been trained)."""
        return self.status is DetectorStatus.ACTIVE

    def ensure_can_detect(self) -> None:
        """Raise :class:`DetectorNotReadyError` unless :meth:`can_detect`, saying why."""
        if self.can_detect():
            return
        why = {
            DetectorStatus.CREATED: "it has not been trained yet",
            DetectorStatus.TRAINED: "it is trained but not active; activate it first",
            DetectorStatus.ARCHIVED: "it is archived; activate it to use it again",
            DetectorStatus.FAILED: f"its training failed ({self.error or 'no reason recorded'})",
        }[self.status]
        raise DetectorNotReadyError(f"detector {self.name!r} cannot detect: {why}")

    # -- transitions ---------------------------------------------------------------------
    def mark_trained(self, *, n_features: int, feature_names=None, data_fingerprint=None, when=None) -> None:
        """Record a successful training: the next version, TRAINED (retraining an ACTIVE one too)."""
        self._require("mark_trained", DetectorStatus.CREATED, DetectorStatus.FAILED, DetectorStatus.TRAINED, DetectorStatus.ACTIVE)
        if isinstance(n_features, bool) or not isinstance(n_features, numbers.Integral) or n_features < 1:
            raise InvalidTransitionError(f"n_features must be a positive integer, got {n_features!r}")
        if feature_names is not None:
            feature_names = [str(f) for f in feature_names]
            if len(feature_names) != n_features:
                raise InvalidTransitionError(
                    f"{len(feature_names)} feature names given for {n_features} features"
                )
        self.n_features = int(n_features)
        self.feature_names = feature_names
        self.data_fingerprint = data_fingerprint
        self.trained_at = when or _now()
        self.version += 1
        self.error = None
        self.status = DetectorStatus.TRAINED

    def mark_failed(self, reason: str) -> None:
        """Record that the first training failed (a failed retrain leaves the detector as it was)."""
        self._require("mark_failed", DetectorStatus.CREATED, DetectorStatus.FAILED)
        self.error = str(reason)
        self.status = DetectorStatus.FAILED

    def activate(self) -> None:
        """Make a trained (or archived) detector available for detection."""
        self._require("activate", DetectorStatus.TRAINED, DetectorStatus.ACTIVE, DetectorStatus.ARCHIVED)
        if self.version < 1 or self.trained_at is None:  # keeps "active implies trained"
            raise InvalidTransitionError(f"detector {self.name!r} has no trained version to activate")
        self.status = DetectorStatus.ACTIVE

    def archive(self) -> None:
        """Retire a trained detector: it keeps its versions but no longer detects."""
        self._require("archive", DetectorStatus.TRAINED, DetectorStatus.ACTIVE, DetectorStatus.ARCHIVED)
        self.status = DetectorStatus.ARCHIVED

    def _require(self, action: str, *allowed: DetectorStatus) -> None:
        if self.status not in allowed:
            names = ", ".join(s.value for s in allowed)
            raise InvalidTransitionError(
                f"cannot {action} detector {self.name!r} while it is {self.status.value}; allowed from: {names}"
            )

    # -- plain data ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able dict (datetimes as ISO 8601 strings, status as its value)."""
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        d["created_at"] = self.created_at.isoformat()
        d["trained_at"] = self.trained_at.isoformat() if self.trained_at else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Detector":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["created_at"] = datetime.fromisoformat(d["created_at"])
        if d.get("trained_at"):
            d["trained_at"] = datetime.fromisoformat(d["trained_at"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class ScoreStats:
    """Summary of training scores that the score transforms are fitted on (pynomaly.scores).

    Attributes
    ----------
    n : int
        Number of training scores.
    mean, std : float
        Mean and population standard deviation (``np.mean``, ``np.std`` with ddof=0).
    min, max : float
        Smallest and largest training score.
    """

    n: int
    mean: float
    std: float
    min: float
    max: float


@dataclasses.dataclass(frozen=True)
class DetectorVersion:
    """One trained version of a detector, as a value: what scoring with it needs to know.

    Built once when a version is loaded for scoring (:func:`pynomaly.service.load_for_scoring`)
    and shared by every face that serves it.

    Attributes
    ----------
    name, version, algorithm : the detector's name, this version's number and its registry name
    n_features : int
    feature_names : tuple of str or None
    threshold : float
        Scores above it are labelled anomalies (``threshold_`` of the fitted model).
    training_stats : ScoreStats or None
        Summary of the training scores (for probabilities); None when the model has none.
    contamination : float or None
        The share of anomalies the threshold was derived from, when known.
    detector_id : str or None
        The repository's id of the detector, when it came from one.
    status : str or None
        The detector's lifecycle status when this version was loaded (from a repository), else None.
    """

    name: str
    version: int
    algorithm: str
    n_features: int
    threshold: float
    feature_names: Optional[tuple] = None
    training_stats: Optional[ScoreStats] = None
    contamination: Optional[float] = None
    detector_id: Optional[str] = None
    status: Optional[str] = None  # the detector's lifecycle status when loaded ("active"), where it has one

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise InvalidTransitionError(f"a detector version needs a name, got {self.name!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, numbers.Integral):
            raise InvalidTransitionError(f"version must be an integer, got {self.version!r}")
        if isinstance(self.n_features, bool) or not isinstance(self.n_features, numbers.Integral) or self.n_features < 1:
            raise InvalidTransitionError(f"n_features must be a positive integer, got {self.n_features!r}")
        object.__setattr__(self, "version", int(self.version))
        object.__setattr__(self, "n_features", int(self.n_features))
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.feature_names is not None:
            object.__setattr__(self, "feature_names", tuple(str(f) for f in self.feature_names))


def _check_unit(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTransitionError(f"{name} must be a real number in [0, 1], got {value!r}")
    v = float(value)
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise InvalidTransitionError(f"{name} must be in [0, 1], got {value!r}")
    return v


@dataclasses.dataclass(frozen=True)
class AnomalyScore:
    """A normalised anomaly score and the confidence in it, both in [0, 1]."""

    value: float
    confidence: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "value", _check_unit("AnomalyScore.value", self.value))
        object.__setattr__(self, "confidence", _check_unit("AnomalyScore.confidence", self.confidence))


@dataclasses.dataclass(frozen=True)
class ContaminationRate:
    """The expected share of anomalies, in (0, 0.5] (PyOD's ``contamination``)."""

    value: float

    def __post_init__(self):
        v = self.value
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0.0 < float(v) <= 0.5):
            raise InvalidTransitionError(f"contamination must be a float in (0, 0.5], got {v!r}")
        object.__setattr__(self, "value", float(v))

    def __float__(self) -> float:
        return self.value


_F64 = np.dtype(np.float64)
_I64 = np.dtype(np.int64)
_BOOL = np.dtype(np.bool_)
_time = time.time
_new = object.__new__


def _per_row(name: str, value, dtype: np.dtype, n: int) -> np.ndarray:
    """``value`` as a 1-D ``dtype`` array of ``n`` rows (no copy when it is one already)."""
    if type(value) is not np.ndarray or value.dtype is not dtype:
        value = np.asarray(value, dtype=dtype)
    if value.ndim != 1 or value.shape[0] != n:
        raise InvalidTransitionError(f"{name} must have one value per row ({n}), got shape {value.shape}")
    return value


def _explained(explanation, n: int) -> dict:
    """The ``_more`` entry of a checked explanation: its ``values`` 2-D float64 with one row
    per score, and the ``method`` and ``output`` they came from named."""
    values = getattr(explanation, "values", None)
    if type(values) is not np.ndarray or values.dtype is not _F64 or values.ndim != 2 or values.shape[0] != n:
        raise InvalidTransitionError(f"an explanation's values must be float64 of shape ({n}, n_features), one row "
                                     f"per row scored; got {getattr(values, 'dtype', type(values).__name__)} of "
                                     f"shape {getattr(values, 'shape', None)}")
    if not isinstance(getattr(explanation, "method", None), str) or not isinstance(getattr(explanation, "output", None), str):
        raise InvalidTransitionError("an explanation needs the method and output its values came from (strings)")
    return {"explanation": explanation}


def _explained_part(part: str, result: "DetectionResult"):
    e = result._get("explanation")
    return None if e is None else getattr(e, part)


class DetectionResult:
    """The outcome of scoring a batch: columnar arrays plus a few numbers. Immutable.

    ``scores`` (float64, higher = more anomalous) and ``labels`` (int64, 1 = anomaly; ``flags``
    is the same decision as a bool array) stay NumPy arrays; per-row :class:`AnomalyScore`
    objects are built only when ``anomalies`` is read (for people, not for the hot path).

    Every face encodes its replies from this one type (issue 21), so it is cheap enough to
    build per request of one row: its fields are slots behind read-only properties, ``id``
    and ``timestamp`` (the construction time) are made on first read, and ``labels`` and
    ``flags`` are converted from whichever was given only when read. ``ROW_OUTPUTS`` names the
    per-row arrays a request may ask for: a new output is one name there, one keyword here,
    and one encoder per face.

    ``explanation`` is the detector's explanation of the rows (``model.explain(X, method)``, a
    :class:`pynomaly.Explanation`), present only when a request asked for it (it needs the
    rows, not just their scores); ``attributions`` (float64, (n, d)), ``explain_method`` and
    ``explain_output`` are its values, how they were computed and what they add up to.
    """

    ROW_OUTPUTS = ("scores", "labels", "probabilities", "confidence", "attributions")

    # The fields every result has, then ``_more``: a dict of the rest (processing time,
    # dataset, probabilities, confidence, id, timestamp, ranked anomalies) or None; a serving
    # face's result sets eight slots and nothing else.
    __slots__ = ("_detector_id", "_detector_version", "_threshold", "_scores", "_labels", "_flags", "_made", "_more")

    def __init__(self, detector_id: str, detector_version: int, threshold: float, scores, labels,
                 processing_time_ms: float = 0.0, dataset_id: Optional[str] = None,
                 timestamp: Optional[datetime] = None, id: Optional[str] = None,
                 probabilities=None, confidence=None, explanation=None, top_features=None):
        if type(scores) is not np.ndarray or scores.dtype is not _F64 or scores.ndim != 1:
            scores = np.asarray(scores, dtype=np.float64)
            if scores.ndim != 1:
                raise InvalidTransitionError(f"scores must be a 1-D array, got shape {scores.shape}")
        n = scores.shape[0]
        if type(labels) is np.ndarray and labels.dtype is _BOOL:
            self._flags = _per_row("labels", labels, _BOOL, n)
            self._labels = None
        else:
            self._labels = _per_row("labels", labels, _I64, n)
            self._flags = self._labels != 0  # flags are always there: the faces read them per request
        self._detector_id = detector_id
        self._detector_version = detector_version
        self._threshold = threshold
        self._scores = scores
        self._made = _time()
        self._more = {
            "processing_time_ms": processing_time_ms, "dataset_id": dataset_id, "timestamp": timestamp, "id": id,
            "probabilities": None if probabilities is None else _per_row("probabilities", probabilities, _F64, n),
            "confidence": None if confidence is None else _per_row("confidence", confidence, _F64, n),
        }
        if explanation is not None:
            self._more.update(_explained(explanation, n))
        self._more["top_features"] = top_features

    def explained(self, explanation, top_features=None) -> "DetectionResult":
        """This result with the ``explanation`` of its rows added (checked), and ``top_features``
        when given: a new result, this one left as it is. How a serving face adds a request's
        explanation to the batch's :meth:`decided` result."""
        r = _new(DetectionResult)
        for slot in DetectionResult.__slots__:
            setattr(r, slot, getattr(self, slot))
        r._more = dict(self._more or (), top_features=top_features or self._get("top_features"))
        r._more.update(_explained(explanation, self._scores.shape[0]))
        return r

    @classmethod
    def decided(cls, detector_id: str, detector_version: int, threshold: float, scores: np.ndarray,
                flags: np.ndarray) -> "DetectionResult":
        """The result of a serving face's batch: ``scores`` as a Scorer gives them (float64,
        1-D) and their ``flags`` by :func:`flagged`. Nothing is checked or copied: the data
        plane builds one per request, and a request of one row costs only microseconds. Its
        ``timestamp`` is the time it is first read (such results are encoded at once, never
        stored)."""
        r = _new(cls)
        r._detector_id = detector_id
        r._detector_version = detector_version
        r._threshold = threshold
        r._scores = scores
        r._flags = flags
        r._labels = None
        r._made = None
        r._more = None
        return r

    detector_id = property(operator.attrgetter("_detector_id"))
    detector_version = property(operator.attrgetter("_detector_version"))
    threshold = property(operator.attrgetter("_threshold"))
    scores = property(operator.attrgetter("_scores"))

    def _get(self, name: str, default=None):
        more = self._more
        return default if more is None else more.get(name, default)

    def _keep(self, name: str, value):
        if self._more is None:
            self._more = {}
        self._more[name] = value
        return value

    @property
    def processing_time_ms(self) -> float:
        return self._get("processing_time_ms", 0.0)

    @property
    def dataset_id(self) -> Optional[str]:
        return self._get("dataset_id")

    @property
    def probabilities(self) -> Optional[np.ndarray]:
        """Outlier probability per row, when asked for."""
        return self._get("probabilities")

    @property
    def confidence(self) -> Optional[np.ndarray]:
        """ExCeeD confidence of each label, when asked for."""
        return self._get("confidence")

    explanation = property(functools.partial(_get, name="explanation"),
                           doc="The detector's pynomaly.Explanation of the rows (values, base values, feature "
                               "names, the rows' data), when asked for")
    top_features = property(functools.partial(_get, name="top_features"),
                            doc="Each anomaly's top features kept with the result (a detection's explain: K): "
                                '{row: [{"feature", "value", "attribution"}, ...]}, or None')
    attributions = property(functools.partial(_explained_part, "values"),
                            doc="float64 (n, d): each feature's attribution of each row's score, when asked for")
    explain_method = property(functools.partial(_explained_part, "method"),
                              doc='How ``attributions`` were computed (e.g. "tree_shap", "path"), when present')
    explain_output = property(functools.partial(_explained_part, "output"),
                              doc='What a row\'s attributions plus its base value add up to (e.g. "log2_score")')

    def __repr__(self) -> str:
        return (f"DetectionResult(detector_id={self._detector_id!r}, detector_version={self._detector_version}, "
                f"threshold={self._threshold!r}, rows={self._scores.shape[0]}, id={self.id!r})")

    @property
    def id(self) -> str:
        """A unique id (32 hex characters), made when first read unless given."""
        return self._get("id") or self._keep("id", uuid.uuid4().hex)

    @property
    def timestamp(self) -> datetime:
        """When the result was made (UTC), unless given."""
        made = self._made if self._made is not None else _time()
        return self._get("timestamp") or self._keep("timestamp", datetime.fromtimestamp(made, timezone.utc))

    @property
    def labels(self) -> np.ndarray:
        """int64, 1 for an anomaly."""
        if self._labels is None:
            self._labels = self._flags.astype(np.int64)
        return self._labels

    flags = property(operator.attrgetter("_flags"), doc="bool, True for an anomaly (what :func:`flagged` returns)")

    @property
    def anomaly_indices(self) -> np.ndarray:
        """Indices (int64, ascending) of the rows labelled 1."""
        return np.flatnonzero(self.labels).astype(np.int64)

    @property
    def metrics(self) -> dict:
        """``total_samples``, ``anomalies_detected``, ``anomaly_rate``, ``processing_time_ms``."""
        n = int(self.scores.shape[0])
        k = int(np.count_nonzero(self.labels))
        return {
            "total_samples": n,
            "anomalies_detected": k,
            "anomaly_rate": k / n if n else 0.0,
            "processing_time_ms": float(self.processing_time_ms),
        }

    @property
    def anomalies(self) -> list:
        """``[(sample_index, AnomalyScore), ...]`` for the rows labelled 1, most anomalous first.

        ``value`` is the score scaled linearly to [0, 1] over this batch (PyOD's 'linear'
        ``predict_proba``); ``confidence`` is the share of this batch's rows scoring at most
        as high (1.0 for the top row).
        """
        return self._get("anomalies") or self._keep("anomalies", self._rank_anomalies())

    def _rank_anomalies(self) -> list:
        idx = np.flatnonzero(self.labels)
        if idx.size == 0:
            return []
        s = self.scores
        lo, hi = float(s.min()), float(s.max())
        span = hi - lo
        sorted_scores = np.sort(s)
        rank = np.searchsorted(sorted_scores, s[idx], side="right") / s.size
        value = np.clip((s[idx] - lo) / span, 0.0, 1.0) if span > 0 else np.ones(idx.size)
        order = np.argsort(-s[idx], kind="stable")
        return [(int(idx[i]), AnomalyScore(float(value[i]), float(rank[i]))) for i in order]

    def summary(self) -> dict:
        """A JSON-able summary: ids, threshold, metrics and timestamp (no per-row data)."""
        return {
            "id": self.id,
            "detector_id": self.detector_id,
            "detector_version": self.detector_version,
            "dataset_id": self.dataset_id,
            "threshold": float(self.threshold) if math.isfinite(self.threshold) else None,
            "timestamp": self.timestamp.isoformat(),
            **self.metrics,
        }


def flagged(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The decision rule, the one statement of it in Python: a row is an anomaly when its score
    is above the threshold (a score equal to it is not). A bool array, one value per score;
    ``labels`` are its int64 form. The native core states the same rule once in C++."""
    return scores > threshold


def fingerprint(X: np.ndarray) -> str:
    """A content hash of a data matrix (shape, dtype and values): 32 hex characters."""
    X = np.ascontiguousarray(X)
    h = hashlib.sha256()
    h.update(f"{X.dtype.str}|{X.shape}".encode())
    h.update(memoryview(X).cast("B"))
    return h.hexdigest()[:32]


def elapsed_ms(t0: float) -> float:
    """Milliseconds since ``t0`` (a ``time.perf_counter()`` reading)."""
    return 1e3 * (time.perf_counter() - t0)

