"""Use cases: train, detect, list, show, archive, delete, export, import — one implementation
for every face (the CLI, the daemon, the HTTP API). Plain functions; they return data and raise
pynomaly errors, and never print.

Every function takes ``home`` (a folder, or None for ``PYNOMALY_HOME`` / the user data
folder) or an open :class:`~pynomaly.repository.Repository`.

Detection is one thing, whichever face asks: :func:`load_for_scoring` (or
:func:`load_file_for_scoring` for a bare model file) returns a :class:`Scorer` (defined in
:mod:`pynomaly.scorer`, re-exported here), and
``Scorer.detect(X, want=...)`` is the only place where scores become labels, probabilities,
confidences and anomaly indices. Faces that batch requests (the daemon) call
``Scorer.score`` once per batch and ``Scorer.decide`` on the scores.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pynomaly._errors import (
    ArtifactIntegrityError,
    DetectorNotFoundError,
    InvalidInputError,
    ModelFormatError,
    UntrustedPickleError,
)
from pynomaly.estimators._validation import as_matrix
from pynomaly.domain import DetectionResult, Detector, DetectorStatus, DetectorVersion, check_name, fingerprint
from pynomaly.store._files import atomic_write
from pynomaly.store.exportfile import read_export, write_export
from pynomaly.store.repository import Repository
from pynomaly.service.scorer import WANT_ALL, Decisions, Scorer  # the faces know them as service.*

__all__ = [
    "Scorer",
    "Decisions",
    "WANT_ALL",
    "train",
    "detect",
    "load_for_scoring",
    "load_file_for_scoring",
    "load_model",
    "list_detectors",
    "overview",
    "show",
    "versions",
    "archive",
    "activate",
    "delete",
    "export",
    "import_detector",
    "export_model",
    "write_model_file",
    "load_data",
    "store_dataset",
    "list_datasets",
    "dataset",
    "dataset_rows",
    "delete_dataset",
    "result",
    "results",
    "home_path",
    "doctor",
    "init_home",
    "check_key",
    "key_source",
    "rotate_key",
    "reencrypt",
    "audit_record",
    "audit_entries",
    "audit_verify",
    "record_failed_training",
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


def check_reachable(home) -> None:
    """Raise :class:`~pynomaly._errors.RepositoryUnavailableError` if a database home's server
    does not answer now (one ``SELECT 1`` on a fresh connection); a folder home always is.
    For readiness probes: cheap, and it never creates or migrates anything."""
    from pynomaly.store._home import is_database_url

    if is_database_url(home):
        from pynomaly.store import _db

        with _db.Database(home) as db:
            db.execute("SELECT 1").fetchone()


def home_path(home):
    """What a ``home`` argument means: its folder (a Path, created if absent), or a database
    home's URL (a str; its tables created if absent). Installation-local files go in
    ``pynomaly._home.local_dir`` of it, never in ``home_path(home)`` itself."""
    with _repo(home) as repo:
        return repo.home


def _report(progress: Progress, stage: str, fraction=None) -> None:
    if progress is not None:
        progress(stage, fraction)


def load_data(data, columns=None):
    """``(X, column_names, source)`` from a file path or an array-like (DataFrames keep their
    column names). ``columns`` selects features by name or index."""
    if isinstance(data, (str, Path)):
        from pynomaly.store.dataio import load_table

        X, names = load_table(data, columns)
        return X, names, str(Path(data).resolve())
    names = [str(c) for c in data.columns] if hasattr(data, "columns") else None
    X = as_matrix(data)
    if names is None:
        names = [f"x{i}" for i in range(X.shape[1])]
    if columns is not None:
        from pynomaly.store.dataio import select_columns

        X, names = select_columns(X, names, list(columns))
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
    _report(progress, "loading data")
    with _repo(home) as repo:
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
        _report(progress, "training", 0.0)
        try:
            if registry.reports_progress(algorithm):
                model.fit(X, progress=lambda f: _report(progress, "training", f))
            else:
                model.fit(X)
        except BaseException as e:
            if first:
                detector.mark_failed(f"{type(e).__name__}: {e}")
                repo.put(detector)
            raise
        _report(progress, "saving")
        fp = fingerprint(X)
        if dataset_id is None:
            dataset_id = repo.add_dataset(Path(source).name if source else "array", source, X.shape, names, fp)
        detector.algorithm, detector.parameters = algorithm, params
        detector.mark_trained(n_features=X.shape[1], feature_names=names, data_fingerprint=fp)
        if activate:
            detector.activate()
        return repo.add_version(
            detector, model.to_bytes(), format=getattr(model, "artifact_format", "native"),
            threshold=getattr(model, "threshold_", None), dataset_id=dataset_id,
        )


def _model_from_bytes(algorithm: str, blob: bytes, what: str, **load_kwargs):
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
    model = _model_from_bytes(detector.algorithm, blob, f"artifact of {name!r} version {detector.version}", **load_kwargs)
    return detector, model


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


def load_file_for_scoring(path, name: str, version: int, *, trust_pickle: bool = False, **load_kwargs) -> Scorer:
    """A :class:`Scorer` for a model file outside any repository (the daemon's ``--models``).

    Two kinds of file are read: a native model's own bytes (``to_bytes()`` of IsolationForest,
    LOF or KNN, recognised by its magic bytes) and an export file (``pynomaly export``, any
    algorithm). An export holding a pickled (PyOD) model is refused unless ``trust_pickle``:
    a file with no signature from a known key is only unpickled when its owner says so.
    Raises DetectorNotFoundError (no such file) or ArtifactIntegrityError.
    """
    from pynomaly.estimators._format import algorithm_of

    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise DetectorNotFoundError(f"detector {name!r} has no version {version} ({path.name})") from None
    algorithm = algorithm_of(blob)
    feature_names = None
    if algorithm is None:
        try:
            exp = read_export(path)
        except ArtifactIntegrityError:
            raise ArtifactIntegrityError(f"{path} is neither a pynomaly model file nor an export file") from None
        if exp.format == "pickle" and not trust_pickle:
            raise UntrustedPickleError(
                f"{path} holds a pickled ({exp.algorithm}) model; serve it only from a folder you trust "
                "(daemon: --trust-pickle)"
            )
        algorithm, blob, feature_names = exp.algorithm, exp.blob, exp.feature_names
    model = _model_from_bytes(algorithm, blob, str(path), **load_kwargs)
    return Scorer.of(model, name, version, algorithm=algorithm, feature_names=feature_names)


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
) -> DetectionResult:
    """Score ``data`` (or the stored dataset ``dataset_id``) with detector ``name`` (latest or
    given version) and, with ``save``, store the result (metadata plus a scores artifact) and
    the dataset's description.

    The columns a detector was trained on are selected by name when ``columns`` is not given
    and the file (or stored dataset) has them, in any order. A header that lacks some of them
    is refused rather than read by position; ``columns`` (indices for position) forces a choice.
    A face that keeps loaded detectors passes its ``scorer`` for ``name``; it is then not
    loaded again.
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
        result = scorer.detect(X, threshold=threshold, contamination=contamination, dataset_id=dataset_id)
        if save:
            repo.save_result(result)
        _after_detection(repo, name, result)
    return result


def _after_detection(home, name: str, result: DetectionResult) -> None:
    """Every detection of the service counts in the metrics and is checked against the
    detector's alert rules (which queue alerts; nothing is sent here)."""
    import logging

    from pynomaly.service import alerts, metrics

    m = result.metrics
    metrics.observe_detection(name, m["total_samples"], m["anomalies_detected"], m["processing_time_ms"] / 1e3)
    try:
        alerts.evaluate(home, name, result)
    except Exception as e:  # noqa: BLE001 - the detection stands; the log says what was not queued
        logging.getLogger("pynomaly.alerts").warning("alert rules of %r not evaluated: %s", name, e)


def record_failed_training(home, name: str, algorithm: str, params: dict, reason: str) -> Optional[Detector]:
    """Record a training that never finished (a job whose worker kept dying): a detector never
    trained becomes FAILED with ``reason``; one with versions is left as it was (as a failed
    retraining leaves it). Returns the detector when it was marked."""
    with _repo(home) as repo:
        try:
            detector = repo.get(name)
        except DetectorNotFoundError:
            detector = Detector(name=name, algorithm=algorithm, parameters=params)
        if detector.version != 0:
            return None
        detector.mark_failed(reason)
        repo.put(detector)
        return detector


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


def store_dataset(home, data, name: Optional[str] = None, *, columns=None) -> dict:
    """Keep a dataset's rows in the repository, to train or detect on later by its id.

    ``data`` is a file (.csv, .tsv, .npy, .npz, .parquet) or an array-like; ``name``
    defaults to the file's name. Rows must be finite numbers (checked before anything is
    stored). Returns the dataset's metadata (``id``, ``name``, ``n_rows``, ``n_columns``,
    ``column_names``, ...); the same rows stored twice under the same name get the same id.
    """
    X, names, source = load_data(data, columns)
    if X.shape[0] == 0:
        raise InvalidInputError("the dataset has no rows")
    if name is None:
        name = Path(source).name if source else "array"
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(X, dtype=np.float64), allow_pickle=False)
    with _repo(home) as repo:
        did = repo.add_dataset(str(name), f"stored:{name}", X.shape, names, fingerprint(X), rows=buf.getvalue())
        return repo.dataset(did)


def list_datasets(home) -> list:
    """Metadata of every recorded dataset (``stored`` says whether its rows are kept)."""
    with _repo(home) as repo:
        return repo.datasets()


def dataset(home, dataset_id: str) -> dict:
    """One dataset's metadata; DatasetNotFoundError when unknown."""
    with _repo(home) as repo:
        return repo.dataset(dataset_id)


def dataset_rows(home, dataset_id: str, columns=None):
    """``(X, column_names)`` of a stored dataset (``columns`` selects by name or index)."""
    with _repo(home) as repo:
        meta = repo.dataset(dataset_id)
        blob = repo.dataset_rows(dataset_id)
    from pynomaly.store.dataio import array_from_npy

    try:
        X = array_from_npy(blob, f"the stored rows of dataset {dataset_id}")
    except InvalidInputError as e:
        raise ArtifactIntegrityError(f"dataset {dataset_id} cannot be read: {e}") from None
    names = list(meta["column_names"]) or [f"x{i}" for i in range(X.shape[1])]
    if columns is not None:
        from pynomaly.store.dataio import select_columns

        X, names = select_columns(X, names, list(columns))
    return X, names


def delete_dataset(home, dataset_id: str) -> None:
    """Forget a dataset and its stored rows."""
    with _repo(home) as repo:
        repo.delete_dataset(dataset_id)


def result(home, result_id: str) -> DetectionResult:
    """A stored detection result with its scores and labels; ResultNotFoundError when unknown."""
    with _repo(home) as repo:
        return repo.load_result(result_id)


def results(home, name: str) -> list:
    """Metadata of detector ``name``'s stored results, oldest first."""
    with _repo(home) as repo:
        return repo.results(name)


def list_detectors(home) -> list:
    """Every stored detector (Detector entities, by name)."""
    with _repo(home) as repo:
        return repo.list()


def overview(home) -> list:
    """Every detector with what a list of them shows, read in one repository session:
    ``[{"detector": Detector, "versions": int, "threshold": latest version's or None,
    "last_result": the newest stored result's metadata or None}]``, by name."""
    with _repo(home) as repo:
        out = []
        for d in repo.list():
            versions = repo.versions(d.name)
            results = repo.results(d.name)
            out.append({"detector": d, "versions": len(versions),
                        "threshold": versions[-1]["threshold"] if versions else None,
                        "last_result": results[-1] if results else None})
        return out


def show(home, name: str) -> dict:
    """A detector's entity as a dict, plus ``versions`` (metadata of each) and ``results``
    (the stored detection results' metadata)."""
    with _repo(home) as repo:
        d = repo.get(name)
        out = d.to_dict()
        out["versions"] = repo.versions(name)
        out["results"] = repo.results(name)
        return out


def versions(home, name: str) -> list:
    """Metadata of every stored version of ``name`` (dicts, oldest first)."""
    with _repo(home) as repo:
        return repo.versions(name)


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


def export(home, name: str, path, version=None, *, key: Optional[bytes] = None) -> Path:
    """Write detector ``name`` (latest or given version) to one self-contained file.

    ``key`` (32 bytes) encrypts the file to that key; an encrypted home requires one
    (KeyRequiredError otherwise), so its models never leave it in clear.
    """
    with _repo(home) as repo:
        return repo.export(name, path, version, key=key)


def import_detector(home, path, name=None, *, trust_pickle: bool = False, key: Optional[bytes] = None) -> Detector:
    """Import an exported file as the next version of ``name`` (default: its own name), active.

    Files are checked end to end (checksum, artifact hash). A pickled (PyOD) artifact must be
    signed by this repository's key; one from elsewhere is refused unless ``trust_pickle``
    (then it is re-signed here: only for files from a source you trust). ``key``: the key an
    encrypted export was written to.
    """
    from pynomaly.estimators import registry

    exp = read_export(path, key)
    name = check_name(name or exp.name)
    with _repo(home) as repo:
        repo.require_key()
        if exp.format == "pickle" and not trust_pickle and not repo.signed_here(exp):
            raise UntrustedPickleError(
                f"{Path(path).name} holds a pickled model signed by another repository's key; import it with"
                " trust_pickle=True (CLI: --trust-pickle) only if you trust where it came from"
            )
        registry.get(exp.algorithm)  # unknown algorithms are refused before anything is stored
        try:
            d = repo.get(name)
        except DetectorNotFoundError:
            d = Detector(name=name, algorithm=exp.algorithm, parameters=exp.parameters)
        if d.status is DetectorStatus.ARCHIVED:
            d.activate()
        d.algorithm, d.parameters = exp.algorithm, exp.parameters
        d.mark_trained(
            n_features=exp.n_features,
            feature_names=exp.feature_names,
            data_fingerprint=exp.data_fingerprint,
            when=exp.trained_at,
        )
        d.activate()
        return repo.add_version(d, exp.blob, format=exp.format, threshold=exp.threshold)


def export_model(model, path, name: str, algorithm: str, *, version: int = 1, feature_names=None) -> Path:
    """Write a fitted model in hand as an export file, as :func:`export` writes a stored one
    (readable by :func:`import_detector` and by the daemon's ``--models`` folders).

    A pickled (PyOD) model is written unsigned: whoever reads it must trust the file.
    """
    import json

    params = model.get_params() if hasattr(model, "get_params") else {}
    try:
        json.dumps(params)
    except (TypeError, ValueError):  # e.g. a user's torch module: code, not data
        params = {}
    return write_export(
        path, name=name, algorithm=algorithm, parameters=params,
        blob=model.to_bytes(), n_features=int(model.n_features_in_), threshold=float(model.threshold_),
        format=getattr(model, "artifact_format", "native"), version=int(version), feature_names=feature_names,
    )


def write_model_file(model, path, name: str, algorithm: Optional[str] = None, *, version: int = 1) -> Path:
    """Write a fitted model as one file that :func:`load_file_for_scoring` reads, atomically
    (readers see the old file or the whole new one).

    A native model without an ``algorithm`` is written as its own bytes (``to_bytes()``);
    any other (give its registry ``algorithm``) as an export file.
    """
    path = Path(path)
    if getattr(model, "artifact_format", "native") == "native" and algorithm is None:
        atomic_write(path, model.to_bytes())
        return path
    return export_model(model, path, name, algorithm or type(model).__name__, version=version)


def doctor(home, repair: bool = False) -> dict:
    """Check a home (database, artifacts, version numbers); with ``repair``, fix what can be
    fixed without losing anything. See :meth:`pynomaly.repository.Repository.check`."""
    with _repo(home) as repo:
        return repo.check(repair=repair, load=_check_loads)


def _check_loads(algorithm: str, fmt: str, blob: bytes) -> None:
    """Doctor's load of a stored (non-pickle) artifact: raise unless it makes a model."""
    from pynomaly.estimators import registry
    from pynomaly.store.exportfile import artifact_format

    if fmt != artifact_format(algorithm):  # e.g. a pickle stored as "native": never unpickled
        raise ArtifactIntegrityError(f"format {fmt!r} is not how {algorithm!r} is stored")
    if fmt == "native":
        _model_from_bytes(algorithm, blob, "artifact")
        return
    from pynomaly.estimators.adapters import MissingExtraError, require

    try:
        require(fmt, fmt)
        _model_from_bytes(algorithm, blob, "artifact")
    except (MissingExtraError, InvalidInputError):
        pass  # checked where its extra is installed; one wrapping the user's own code needs that code


# -- encryption at rest --------------------------------------------------------------------
def key_source(key_file=None, key_command=None, *, prefix: str = "PYNOMALY_"):
    """Where a key comes from: ``key_file`` or ``key_command``, else the environment
    (``PYNOMALY_KEY_FILE``, ``PYNOMALY_KEY_COMMAND``, ``PYNOMALY_KEY``; another ``prefix``
    reads e.g. ``PYNOMALY_NEW_KEY``); None when nothing says. See :mod:`pynomaly.crypto`."""
    from pynomaly.store.crypto import key_source as _key_source

    return _key_source(key_file, key_command, prefix=prefix)


def create_key_file(path) -> Path:
    """Write a new random key (base64 of 32 bytes) to ``path``, mode 0600; refuses to overwrite."""
    import os

    from pynomaly.store.crypto import new_key_text

    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInputError(f"{path} exists already; not overwriting a key") from None
    except OSError as e:
        raise InvalidInputError(f"cannot create the key file {path}: {e}") from None
    try:
        os.write(fd, new_key_text().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def init_home(home, *, encrypt: bool = False, key=None):
    """Create a home (a folder; or a database home's tables); with ``encrypt``, make it an
    encrypted one whose data key is wrapped by the key from ``key`` (a :func:`key_source`;
    default: the environment; folder homes only). Returns :func:`home_path`.

    Only an empty home can be made encrypted (move detectors over with export and import).
    """
    from pynomaly._errors import KeyRequiredError

    if encrypt:
        key = key or key_source()
        if key is None:
            raise KeyRequiredError(
                "an encrypted home needs a key-encryption key kept outside it: --key-file PATH (created if absent), "
                "--key-command CMD, or PYNOMALY_KEY (base64 of 32 random bytes)"
            )
    repo = home if isinstance(home, Repository) else Repository(home, key=key)
    try:
        if encrypt:
            repo.encrypt_home(key)
        from pynomaly.store._home import is_database_url

        if is_database_url(repo.home):
            # The pickle-signing key of a database home lives in local_dir (PYNOMALY_CONFIG_DIR),
            # not in the database; made now, so it can be handed to every replica before any
            # of them signs with a key of its own (deploy/README.md).
            repo._key()
        return repo.home
    finally:
        if repo is not home:
            repo.close()


def is_encrypted(home) -> bool:
    """Whether ``home`` is an encrypted home."""
    with _repo(home) as repo:
        return repo.encrypted


def check_key(home) -> None:
    """For an encrypted home, raise KeyRequiredError (naming what is missing or wrong) unless
    its key is given; nothing for a plain home."""
    with _repo(home) as repo:
        repo.require_key()


def rotate_key(home, new_key) -> list:
    """Wrap the home's data key(s) with the key from ``new_key`` (a :func:`key_source`);
    nothing else is rewritten. Needs the current key too. Returns the data key ids."""
    with _repo(home) as repo:
        return repo.rewrap_key(new_key)


def reencrypt(home, progress: Progress = None) -> dict:
    """Seal every artifact and field of an encrypted home under a new data key (resumable;
    see :meth:`pynomaly.repository.Repository.reencrypt`)."""
    with _repo(home) as repo:
        return repo.reencrypt(progress=None if progress is None else (lambda msg: progress(msg, None)))


# -- the audit trail -----------------------------------------------------------------------
def audit_record(home, *, actor: Optional[str] = None, action: str, target: str = "", origin: str = "",
                 outcome: str = "ok", detail: Optional[dict] = None) -> dict:
    """Append one entry to the home's audit trail; every face calls this for each
    state-changing action and each refused access.

    Parameters
    ----------
    home : folder, None or Repository
    actor : str, optional
        Who: ``"uid=1000(alice)"``, ``"token:alice"``, ...; default this process's user.
    action : str
        What: ``"train"``, ``"activate"``, ``"archive"``, ``"delete"``, ``"import"``,
        ``"export"``, ``"keys.rotate"``, ``"keys.reencrypt"``, ``"token.create"``,
        ``"refused"``, ... (at most 64 characters).
    target : str
        What it was done to (a detector name, ``"name@version"``, an op).
    origin : str
        From where: ``"cli host=..."``, ``"daemon peer pid=.. uid=.."``, ``"http 10.0.0.7"``.
    outcome : str
        ``"ok"``, ``"forbidden"``, or ``"error: <message>"``.
    detail : dict, optional
        Anything else, JSON-serialisable.

    Returns the entry (a dict with ``seq``, ``at``, ``hash``, ...). Entries are hash-chained:
    see :func:`audit_verify`.
    """
    from pynomaly.store.audit import default_actor

    with _repo(home) as repo:
        return repo.audit_append(actor=actor or default_actor(), action=action, target=target, origin=origin,
                                 outcome=outcome, detail=detail)


def audit_entries(home, since=None) -> list:
    """Audit entries (dicts, oldest first); ``since``: a datetime, an ISO date/time or an age
    such as ``"12h"`` or ``"7d"``."""
    from pynomaly.store.audit import parse_since

    if isinstance(since, str):
        since = parse_since(since)
    with _repo(home) as repo:
        return repo.audit_entries(since)


def audit_verify(home) -> dict:
    """Check the audit chain: ``{"ok": bool, "entries": n, "problems": [...]}``."""
    with _repo(home) as repo:
        return repo.audit_verify()
