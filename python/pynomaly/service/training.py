"""Training: a detector's next version from a table or a stored dataset, and the record of a
training that never finished."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pynomaly._errors import DetectorNotFoundError, InvalidInputError, PynomalyError
from pynomaly.domain import Detector, DetectorStatus, check_name, fingerprint
from pynomaly.service._common import Progress, opened, report
from pynomaly.service.data import dataset_rows, load_data


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
    dataset_id: Optional[str] = None,
) -> Detector:
    """Train a detector on ``data`` (or the stored dataset ``dataset_id``) and store it as the
    next version of ``name``.

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
    from pynomaly.estimators import registry

    check_name(name)
    params = {**registry.stored_defaults(algorithm), **(params or {})}
    report(progress, "loading data")
    with opened(home) as repo:
        if dataset_id is not None:
            X, names = dataset_rows(repo, dataset_id, columns)
        else:
            X, names, source = load_data(data, columns)
        # What can be checked is checked before any work or write: unknown names and
        # parameters, parameter values, the memory the fit needs, an encrypted home's key.
        # Nothing is stored until the fit is done, so a refused or killed first training
        # leaves no trace.
        repo.require_key()
        model = registry.create(algorithm, **params)
        model.check_fit(*X.shape)
        try:
            detector = repo.get(name)
        except DetectorNotFoundError:
            detector = Detector(name=name, algorithm=algorithm, parameters=params)
        if detector.status is DetectorStatus.ARCHIVED:
            raise InvalidInputError(f"detector {name!r} is archived; activate it before retraining")
        first = detector.version == 0
        if first:
            detector.algorithm, detector.parameters = algorithm, params
        report(progress, "training", 0.0)
        try:
            if registry.reports_progress(algorithm):
                model.fit(X, progress=lambda f: report(progress, "training", f))
            else:
                model.fit(X)
        except BaseException as e:
            if first:
                detector.mark_failed(f"{type(e).__name__}: {e}")
                repo.put(detector)
            raise
        report(progress, "saving")
        fp = fingerprint(X)
        if dataset_id is None:
            dataset_id = repo.add_dataset(Path(source).name if source else "array", source, X.shape, names, fp)
        detector.algorithm, detector.parameters = algorithm, params
        detector.mark_trained(n_features=X.shape[1], feature_names=names, data_fingerprint=fp)
        if activate:
            detector.activate()
        stored = repo.add_version(
            detector, model.to_bytes(), format=getattr(model, "artifact_format", "native"),
            threshold=getattr(model, "threshold_", None), dataset_id=dataset_id,
        )
        _save_reference(repo, stored, X, model)
        return stored


def _save_reference(repo, detector: Detector, X, model) -> None:
    """The new version's drift reference, from the rows it was trained on. The version stands
    without one (the log says why): `pynomaly drift --set-reference` can give it one later."""
    import logging

    from pynomaly.service import drift_live as drift

    try:
        drift.save_reference(repo, detector.name, detector.version, X, model, detector.feature_names)
    except (PynomalyError, ValueError) as e:
        logging.getLogger("pynomaly.drift").warning("no drift reference stored for %r version %s: %s",
                                                    detector.name, detector.version, e)


def record_failed_training(home, name: str, algorithm: str, params: dict, reason: str) -> Optional[Detector]:
    """Record a training that never finished (a job whose worker kept dying): a detector never
    trained becomes FAILED with ``reason``; one with versions is left as it was (as a failed
    retraining leaves it). Returns the detector when it was marked."""
    with opened(home) as repo:
        try:
            detector = repo.get(name)
        except DetectorNotFoundError:
            detector = Detector(name=name, algorithm=algorithm, parameters=params)
        if detector.version != 0:
            return None
        detector.mark_failed(reason)
        repo.put(detector)
        return detector

