"""Use cases: train, detect, list, show, archive, delete, export, import — one implementation
for every face (the CLI now, the daemon later). Plain functions; they return data and raise
pynomaly errors, and never print.

Every function takes ``home`` (a folder, or None for ``PYNOMALY_HOME`` / the user data
folder) or an open :class:`~pynomaly.repository.Repository`.

For the daemon:

- :func:`load_for_scoring` ``(home, name, version=None) -> (Detector, fitted_detector)``
  loads an ACTIVE detector's model once; score with ``fitted.decision_function(X)`` and
  compare with ``fitted.threshold_`` (or call :func:`score_batch`).
- :func:`list_detectors` ``(home) -> list[Detector]``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ._errors import InvalidInputError
from ._validation import as_matrix
from .domain import ContaminationRate, DetectionResult, Detector, DetectorStatus, fingerprint
from .repository import DetectorNotFoundError, Repository

__all__ = [
    "train",
    "detect",
    "score_batch",
    "load_for_scoring",
    "list_detectors",
    "show",
    "archive",
    "activate",
    "delete",
    "export",
    "import_detector",
    "load_data",
]

Progress = Optional[Callable[[str, Optional[float]], None]]


@contextlib.contextmanager
def _repo(home):
    if isinstance(home, Repository):
        yield home
    else:
        r = Repository(home)
        try:
            yield r
        finally:
            r.close()


def _report(progress: Progress, stage: str, fraction=None) -> None:
    if progress is not None:
        progress(stage, fraction)


def load_data(data, columns=None):
    """``(X, column_names, source)`` from a file path or an array-like (DataFrames keep their
    column names). ``columns`` selects features by name or index."""
    if isinstance(data, (str, Path)):
        from .dataio import load_table

        X, names = load_table(data, columns)
        return X, names, str(Path(data).resolve())
    names = [str(c) for c in data.columns] if hasattr(data, "columns") else None
    X = as_matrix(data)
    if names is None:
        names = [f"x{i}" for i in range(X.shape[1])]
    if columns is not None:
        from .dataio import _select

        X, names = _select(X, names, list(columns))
    return X, names, None


def train(
    home,
    name: str,
    data,
    algorithm: str = "IsolationForest",
    params: Optional[dict] = None,
    *,
    columns=None,
    activate: bool = True,
    progress: Progress = None,
) -> Detector:
    """Train a detector on ``data`` and store it as the next version of ``name``.

    Parameters
    ----------
    home : folder, None or Repository
    name : str
        Detector name; a new one is created, an existing one retrained (its next version).
    data : path or array-like
        Training data (see :func:`load_data`).
    algorithm : str
        Registry name (``pynomaly.registry``). For an existing detector, a different algorithm
        is allowed: the new version records it.
    params : dict, optional
        Keyword parameters of the algorithm.
    activate : bool, default True
        Make the new version the one that detects (ACTIVE).
    progress : callable(stage, fraction or None), optional

    Returns
    -------
    Detector
        The stored detector (``version`` is the new version).

    A first training that fails leaves the detector FAILED with the reason; a failed
    retraining leaves the detector and its versions as they were. The error is re-raised.
    """
    from . import registry

    params = {**registry.stored_defaults(algorithm), **(params or {})}
    _report(progress, "loading data")
    X, names, source = load_data(data, columns)
    with _repo(home) as repo:
        model = registry.create(algorithm, **params)  # unknown names and parameters fail before any write
        try:
            detector = repo.get(name)
        except DetectorNotFoundError:
            detector = Detector(name=name, algorithm=algorithm, parameters=params)
        if detector.status is DetectorStatus.ARCHIVED:
            raise InvalidInputError(f"detector {name!r} is archived; activate it before retraining")
        first = detector.version == 0
        if first:
            detector.algorithm, detector.parameters = algorithm, params
            repo.put(detector)
        fp = fingerprint(X)
        dataset_id = repo.add_dataset(Path(source).name if source else "array", source, X.shape, names, fp)
        _report(progress, "training", 0.0)
        if hasattr(model, "__dict__") and registry.kind(algorithm) in ("torch", "jax"):
            model._progress = lambda f: _report(progress, "training", f)
        try:
            model.fit(X)
        except BaseException as e:
            if first:
                detector.mark_failed(f"{type(e).__name__}: {e}")
                repo.put(detector)
            raise
        finally:
            model.__dict__.pop("_progress", None)
        _report(progress, "saving")
        detector.algorithm, detector.parameters = algorithm, params
        detector.mark_trained(n_features=X.shape[1], feature_names=names, data_fingerprint=fp)
        if activate:
            detector.activate()
        return repo.save(detector, model, dataset_id=dataset_id)


def load_for_scoring(home, name: str, version=None, **load_kwargs):
    """Load a detector that can detect and its fitted model: ``(Detector, fitted_detector)``.

    ``version`` None is the latest. Raises DetectorNotFoundError, DetectorNotReadyError (not
    ACTIVE) or ArtifactIntegrityError. Meant to be called once and the model kept: scoring is
    then ``fitted.decision_function(X)``, labels ``scores > fitted.threshold_``.
    """
    with _repo(home) as repo:
        repo.get(name).ensure_can_detect()
        detector, model = repo.load(name, version, **load_kwargs)
    return detector, model


def score_batch(detector: Detector, model, X, *, threshold=None, contamination=None, dataset_id=None) -> DetectionResult:
    """Score X with a loaded model; the threshold is ``threshold``, else the ``contamination``
    quantile of these scores, else the model's ``threshold_``."""
    detector.ensure_can_detect()
    if threshold is not None and contamination is not None:
        raise InvalidInputError("give either threshold or contamination, not both")
    X = as_matrix(X)
    if detector.n_features is not None and X.shape[1] != detector.n_features:
        raise InvalidInputError(
            f"data has {X.shape[1]} features; detector {detector.name!r} was trained on {detector.n_features}"
            + (f" ({', '.join(detector.feature_names)})" if detector.feature_names else "")
        )
    t0 = time.perf_counter()
    scores = np.asarray(model.decision_function(X), dtype=np.float64)
    if threshold is not None:
        t = float(threshold)
        if not np.isfinite(t):
            raise InvalidInputError(f"threshold must be a finite number, got {threshold!r}")
    elif contamination is not None:
        c = ContaminationRate(contamination).value
        t = float(np.percentile(scores, 100.0 * (1.0 - c)))
    else:
        t = float(model.threshold_)
    labels = (scores > t).astype(np.int64)
    ms = 1e3 * (time.perf_counter() - t0)
    return DetectionResult(
        detector_id=detector.id,
        detector_version=detector.version,
        dataset_id=dataset_id,
        threshold=t,
        scores=scores,
        labels=labels,
        processing_time_ms=ms,
    )


def detect(
    home,
    name: str,
    data,
    *,
    version=None,
    threshold=None,
    contamination=None,
    columns=None,
    save: bool = True,
    progress: Progress = None,
) -> DetectionResult:
    """Score ``data`` with detector ``name`` (latest or given version) and, with ``save``,
    store the result (metadata plus a scores artifact) and the dataset's description.

    The CSV columns a detector was trained on are selected by name when ``columns`` is not
    given and the file has them.
    """
    _report(progress, "loading detector")
    with _repo(home) as repo:
        detector, model = load_for_scoring(repo, name, version)
        _report(progress, "loading data")
        if columns is None and isinstance(data, (str, Path)) and detector.feature_names:
            columns = _trained_columns(data, detector.feature_names)
        X, names, source = load_data(data, columns)
        _report(progress, "scoring")
        dataset_id = None
        if save:
            dataset_id = repo.add_dataset(Path(source).name if source else "array", source, X.shape, names, fingerprint(X))
        result = score_batch(detector, model, X, threshold=threshold, contamination=contamination, dataset_id=dataset_id)
        if save:
            repo.save_result(result)
    return result


def _trained_columns(path, feature_names):
    """The trained feature names if the file has all of them (and more), else None."""
    p = Path(path)
    if p.suffix.lower() not in (".csv", ".tsv", ".parquet", ".pq"):
        return None
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            header = pq.read_schema(p).names
        else:
            import csv

            with open(p, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ","), [])
            header = [h.strip() for h in header]
    except Exception:
        return None
    if set(feature_names) <= set(header) and list(feature_names) != header:
        return list(feature_names)
    return None


def list_detectors(home) -> list:
    """Every stored detector (Detector entities, by name)."""
    with _repo(home) as repo:
        return repo.list()


def show(home, name: str) -> dict:
    """A detector's entity as a dict, plus ``versions`` (metadata of each) and ``results``
    (the stored detection results' metadata)."""
    with _repo(home) as repo:
        d = repo.get(name)
        out = d.to_dict()
        out["versions"] = repo.versions(name)
        out["results"] = repo.results(name)
        return out


def archive(home, name: str) -> Detector:
    """Retire a detector: it keeps its versions but can no longer detect."""
    with _repo(home) as repo:
        return repo.set_status(name, "archive")


def activate(home, name: str) -> Detector:
    """Make a trained or archived detector detect again."""
    with _repo(home) as repo:
        return repo.set_status(name, "activate")


def delete(home, name: str) -> int:
    """Delete a detector with its versions and results; returns the number of versions."""
    with _repo(home) as repo:
        return repo.delete(name)


def export(home, name: str, path, version=None) -> Path:
    """Write detector ``name`` (latest or given version) to one self-contained file."""
    with _repo(home) as repo:
        return repo.export(name, path, version)


def import_detector(home, path, name=None, *, trust_pickle: bool = False) -> Detector:
    """Import an exported file as the next version of ``name`` (default: its own name)."""
    with _repo(home) as repo:
        return repo.import_(path, name, trust_pickle=trust_pickle)
