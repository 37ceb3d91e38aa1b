"""Detectors leaving and entering a home as files: export and import of a stored detector,
writing a fitted model in hand, and scoring a model file outside any home (the daemon's
``--models`` folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pynomaly._errors import ArtifactIntegrityError, DetectorNotFoundError, UntrustedPickleError
from pynomaly.domain import Detector, DetectorStatus, check_name
from pynomaly.service._common import opened
from pynomaly.service.scorer import Scorer
from pynomaly.service.usecases import model_from_bytes
from pynomaly.store._files import atomic_write
from pynomaly.store.exportfile import read_export, write_export



def artifact_format(algorithm: str) -> "str | None":
    """How a registry algorithm's artifact is stored ("native", "torch", "jax" or "pickle"),
    None for an unknown name. Readers trust no file's own word for it (an export's format
    decides whether its signature is checked before unpickling)."""
    from pynomaly.estimators import registry

    if not registry.is_known(algorithm):
        return None
    kind = registry.kind(algorithm)
    return "pickle" if kind == "pyod" else kind

def export(home, name: str, path, version=None, *, key: Optional[bytes] = None) -> Path:
    """Write detector ``name`` (latest or given version) to one self-contained file.

    ``key`` (32 bytes) encrypts the file to that key; an encrypted home requires one
    (KeyRequiredError otherwise), so its models never leave it in clear.
    """
    with opened(home) as repo:
        return repo.export(name, path, version, key=key)


def import_detector(home, path, name=None, *, trust_pickle: bool = False, key: Optional[bytes] = None) -> Detector:
    """Import an exported file as the next version of ``name`` (default: its own name), active.

    Files are checked end to end (checksum, artifact hash). A pickled (PyOD) artifact must be
    signed by this repository's key; one from elsewhere is refused unless ``trust_pickle``
    (then it is re-signed here: only for files from a source you trust). ``key``: the key an
    encrypted export was written to.
    """
    from pynomaly.estimators import registry

    exp = read_export(path, key, format_of=artifact_format)
    name = check_name(name or exp.name)
    with opened(home) as repo:
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
            exp = read_export(path, format_of=artifact_format)
        except ArtifactIntegrityError:
            raise ArtifactIntegrityError(f"{path} is neither a pynomaly model file nor an export file") from None
        if exp.format == "pickle" and not trust_pickle:
            raise UntrustedPickleError(
                f"{path} holds a pickled ({exp.algorithm}) model; serve it only from a folder you trust "
                "(daemon: --trust-pickle)"
            )
        algorithm, blob, feature_names = exp.algorithm, exp.blob, exp.feature_names
    model = model_from_bytes(algorithm, blob, str(path), **load_kwargs)
    return Scorer.of(model, name, version, algorithm=algorithm, feature_names=feature_names)

