"""Detection: :func:`detect`, and loading a stored detector to score with
(:func:`load_for_scoring`, :func:`load_model`). The other use cases have modules of their own
(:mod:`.training`, :mod:`.lifecycle`, :mod:`.data`, :mod:`.transfer`, :mod:`.home`); faces
call them all as ``pynomaly.service.<function>``. Plain functions; they return data and raise
pynomaly errors, and never print.

Every function takes ``home`` (a folder, or None for ``PYNOMALY_HOME`` / the user data
folder) or an open :class:`~pynomaly.store.repository.Repository`.

Detection is one thing, whichever face asks: :func:`load_for_scoring` (or
:func:`~pynomaly.service.transfer.load_file_for_scoring` for a bare model file) returns a
:class:`Scorer` (defined in :mod:`pynomaly.service.scorer`, re-exported here), and
``Scorer.detect(X, want=...)`` is the only place where scores become labels, probabilities,
confidences and anomaly indices. Faces that batch requests (the daemon) call
``Scorer.score`` once per batch and ``Scorer.decide`` on the scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pynomaly._errors import ArtifactIntegrityError, InvalidInputError, ModelFormatError
from pynomaly.domain import DetectionResult, Detector, DetectorVersion, fingerprint
from pynomaly.service._common import Progress
from pynomaly.service._common import opened as _repo  # the names detect's body has always used
from pynomaly.service._common import report as _report
from pynomaly.service.data import dataset_rows, load_data
from pynomaly.service.scorer import WANT_ALL, Scorer  # the faces know them as service.*
from pynomaly.service.why import why_of_result, with_top_features

__all__ = ["Scorer", "WANT_ALL", "detect", "load_for_scoring", "load_model", "training_scores"]


def model_from_bytes(algorithm: str, blob: bytes, what: str, **load_kwargs):
    """A fitted model of ``algorithm`` from its stored bytes; ArtifactIntegrityError (naming
    ``what``) for bytes it cannot read."""
    from pynomaly.estimators import registry

    cls = registry.get(algorithm)
    try:
        return cls.from_bytes(blob, **load_kwargs)
    except ModelFormatError as e:
        raise ArtifactIntegrityError(f"{what} cannot be read: {e}") from None


def load_model(home, name: str, version=None, **load_kwargs):
    """A stored version and its fitted model, whatever the detector's status: ``(Detector, model)``.

    ``version`` None is the latest; ``load_kwargs`` go to the class's ``from_bytes`` (e.g.
    ``module=`` for a torch detector wrapping a user's network). Raises DetectorNotFoundError
    or ArtifactIntegrityError.
    """
    with _repo(home) as repo:
        detector, blob = repo.load_artifact(name, version)
    model = model_from_bytes(detector.algorithm, blob, f"artifact of {name!r} version {detector.version}", **load_kwargs)
    return detector, model


def training_scores(home, name: str, version=None):
    """The scores a stored version gave its own training rows (``decision_scores_``, float64),
    or None for a model that does not keep them (e.g. one imported without them); what a
    version's training score distribution is drawn from. ``version`` None is the latest."""
    import numpy as np

    _, model = load_model(home, name, version)
    scores = getattr(model, "decision_scores_", None)
    return None if scores is None or len(scores) == 0 else np.asarray(scores, dtype=np.float64)


def _version_of(detector: Detector, model) -> DetectorVersion:
    return Scorer.of(
        model, detector.name, detector.version, algorithm=detector.algorithm, feature_names=detector.feature_names,
        detector_id=detector.id, status=detector.status.value,
    ).version


def load_for_scoring(home, name: str, version=None, **load_kwargs) -> Scorer:
    """Load a detector that can detect, ready to score: a :class:`Scorer`.

    ``version`` None is the latest. Raises DetectorNotFoundError, DetectorNotReadyError (not
    ACTIVE) or ArtifactIntegrityError. Meant to be called once and the Scorer kept.
    """
    with _repo(home) as repo:
        repo.get(name).ensure_can_detect()
        detector, model = load_model(repo, name, version, **load_kwargs)
    return Scorer(_version_of(detector, model), model)


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
    dataset_id: Optional[str] = None,
    scorer: Optional[Scorer] = None,
    face: str = "batch",
    explain: bool = False,
    explain_method: Optional[str] = None,
    top_k: Optional[int] = None,
) -> DetectionResult:
    """Score ``data`` (or the stored dataset ``dataset_id``) with detector ``name`` (latest or
    given version) and, with ``save``, store the result (metadata plus a scores artifact) and
    the dataset's description.

    The columns a detector was trained on are selected by name when ``columns`` is not given
    and the file (or stored dataset) has them, in any order. A header that lacks some of them
    is refused rather than read by position; ``columns`` (indices for position) forces a choice.
    A face that keeps loaded detectors passes its ``scorer`` for ``name``; it is then not
    loaded again, and its name as ``face`` for the latency metric. ``explain``: the result carries every
    row's ``attributions`` (by ``explain_method``, None: the detector's default); they are not stored with it,
    but with ``top_k`` K each anomaly's top K features are (``result.top_features``, saved with the result).
    """
    _report(progress, "loading detector")
    with _repo(home) as repo:
        if scorer is None:
            scorer = load_for_scoring(repo, name, version)
        _report(progress, "loading data")
        feature_names = scorer.version.feature_names
        if dataset_id is not None:
            if columns is None and feature_names:
                stored = repo.dataset(dataset_id)["column_names"]
                columns = _columns_by_name(stored, feature_names, f"dataset {dataset_id}")
            X, names = dataset_rows(repo, dataset_id, columns)
        else:
            if columns is None and isinstance(data, (str, Path)) and feature_names:
                from pynomaly.store.dataio import read_header

                header = read_header(data)
                columns = None if header is None else _columns_by_name(header, feature_names, Path(data).name)
            X, names, source = load_data(data, columns)
        _report(progress, "scoring")
        if save and dataset_id is None:
            dataset_id = repo.add_dataset(Path(source).name if source else "array", source, X.shape, names, fingerprint(X))
        want = ("scores", "labels", "attributions") if explain else ("scores", "labels")
        result = scorer.detect(X, want, threshold=threshold, contamination=contamination, dataset_id=dataset_id,
                               explain_method=explain_method if explain else None)
        if explain and top_k is not None:
            result = with_top_features(result, top_k)
        if save:
            repo.save_result(result)
        _after_detection(repo, name, result, face, lambda: why_of_result(scorer, X, result))
        _observe_drift(repo, name, result, X)
    return result


def _observe_drift(repo, name: str, result: DetectionResult, X) -> None:
    """The scored rows count in the detector's live drift window (pynomaly.service.drift);
    the detection stands whatever happens there."""
    import logging

    from pynomaly.service import drift_live as drift

    try:
        drift.observe(repo, name, result.detector_version, X, result.scores)
    except Exception as e:  # noqa: BLE001 - the log says what was not counted
        logging.getLogger("pynomaly.drift").warning("rows of %r not counted for drift: %s", name, e)


def _after_detection(home, name: str, result: DetectionResult, face: str = "batch", why=None) -> None:
    """Every detection of the service counts in the metrics and is checked against the
    detector's alert rules (which queue alerts; nothing is sent here). ``why``: a function
    giving the anomalies' top features, called only when a rule fires."""
    import logging

    from pynomaly.service import alerts, metrics

    m = result.metrics
    metrics.observe_detection(name, m["total_samples"], m["anomalies_detected"], m["processing_time_ms"] / 1e3,
                              face=face)
    try:
        alerts.evaluate(home, name, result, why=why)
    except Exception as e:  # noqa: BLE001 - the detection stands; the log says what was not queued
        logging.getLogger("pynomaly.alerts").warning("alert rules of %r not evaluated: %s", name, e)


def _columns_by_name(header, feature_names, what: str):
    """The columns to score ``what`` with: the trained feature names when its header has them
    all (in any order, among others), None to read it as it is (the header is those names, or
    one side has only generated names "x0", "x1", ...: nothing to match).

    A header lacking some of the names is refused: reading it by position would score values
    under the wrong features without a word.
    """
    header, names = list(header), list(feature_names)
    if header == names or _generated(header) or _generated(names):
        return None
    missing = [n for n in names if n not in header]
    if not missing:
        return names
    d = len(names)
    raise InvalidInputError(
        f"{what} has no column(s) {missing} of the {d} features the detector was trained on {names}; its columns "
        f"are {header}. Rename them, or choose the columns to score with --columns (the `columns` parameter): "
        f"names, or 0-based indices such as {','.join(map(str, range(min(d, 3))))}{',...' if d > 3 else ''} "
        "to read them by position"
    )


def _generated(names) -> bool:
    return list(names) == [f"x{i}" for i in range(len(names))]


