"""pynomaly: native-accelerated anomaly detection with PyOD's conventions.

Importing pynomaly loads only NumPy and the domain model; the native core, the estimators and
the service layer load on first use, and optional integrations (PyOD, PyTorch, JAX) when used.

The package is in layers (issue 21): ``pynomaly.estimators`` (detectors, the model format, the
registry, adapters, Dask), ``pynomaly.store`` (the only SQL and files), ``pynomaly.service``
(the use cases every face calls), ``pynomaly.serving`` (what servers share) and the faces
(``pynomaly.cli``, ``pynomaly.client``); ``pynomaly.domain`` is used by all and uses none.
"""

from __future__ import annotations

from pynomaly._errors import (
    ArtifactIntegrityError,
    DatasetNotFoundError,
    DetectorNotFoundError,
    InvalidInputError,
    KeyRequiredError,
    LearnerConflictError,
    ModelFormatError,
    NotFittedError,
    NotFoundError,
    PynomalyError,
    RepositoryError,
    ResultNotFoundError,
    UntrustedPickleError,
)
from pynomaly.domain import (
    AnomalyScore,
    ContaminationRate,
    DetectionResult,
    Detector,
    DetectorNotReadyError,
    DetectorStatus,
)
from pynomaly import _aliases

_aliases.install()  # old import paths of modules that moved into the layer packages (issue 21)

__version__ = "0.1.0"
__all__ = [
    "IsolationForest",
    "LOF",
    "KNN",
    "knn",
    "Explanation",
    "PynomalyError",
    "InvalidInputError",
    "KeyRequiredError",
    "NotFittedError",
    "ModelFormatError",
    "NotFoundError",
    "DetectorNotFoundError",
    "DatasetNotFoundError",
    "ResultNotFoundError",
    "ArtifactIntegrityError",
    "UntrustedPickleError",
    "LearnerConflictError",
    "RepositoryError",
    "build_info",
    "Detector",
    "DetectorStatus",
    "DetectorNotReadyError",
    "AnomalyScore",
    "ContaminationRate",
    "DetectionResult",
    "scores",
    "combine",
    "__version__",
    # daemon clients (issue 6), imported on first use: see __getattr__
    "Client",
    "AsyncClient",
]


def build_info() -> dict:
    """What this build of pynomaly can do.

    Returns a dict with ``simd`` (the SIMD target the kernels use now), ``simd_best`` and
    ``simd_supported`` (what this CPU can run), ``openmp`` (threads available), ``openmp_procs``,
    ``compiler`` and ``version``; ``iforest_kernel`` (the isolation forest's scoring kernel for
    the active target), ``iforest_kernel_reason`` (why: the only kernel for the target, or the
    fastest in a calibration of about a millisecond run once per process and target, with the
    measured times), ``iforest_kernels`` (those the target can run, for tests) and
    ``iforest_kernel_forced``. Set ``PYNOMALY_SIMD=baseline|avx2|avx512|neon`` before import to
    force a lower target.
    """
    from pynomaly import _core

    info = dict(_core.build_info())
    info["version"] = __version__
    return info


# Everything else loads on first use (PEP 562), so `import pynomaly.client` on an edge box
# loads neither the native core nor the service layer; `import pynomaly` stays cheap.
_LAZY = {
    "IsolationForest": "pynomaly.estimators.iforest",
    "LOF": "pynomaly.estimators.neighbors",
    "KNN": "pynomaly.estimators.neighbors",
    "knn": "pynomaly.estimators.neighbors",
    "Explanation": "pynomaly.estimators.explain",
    "Client": "pynomaly.client",
    "AsyncClient": "pynomaly.client",
    "DaemonError": "pynomaly.client",
    "Detection": "pynomaly.client",
}

# Submodules the README uses as ``pynomaly.<name>`` after a plain ``import pynomaly``.
_LAZY_MODULES = {
    "_core": "pynomaly._core",
    "scores": "pynomaly.estimators.scores",
    "combine": "pynomaly.estimators.combine",
    "registry": "pynomaly.estimators.registry",
    "adapters": "pynomaly.estimators.adapters",
    "dask": "pynomaly.estimators.dask",
    "stream": "pynomaly.estimators.stream",
    "service": "pynomaly.service",
    "repository": "pynomaly.store.repository",
    "dataio": "pynomaly.store.dataio",
    "datasets": "pynomaly.store.datasets",
    "jobs": "pynomaly.service.jobs",
    "alerts": "pynomaly.service.alerts",
    "metrics": "pynomaly.service.metrics",
    "wire": "pynomaly.wire",
    "client": "pynomaly.client",
    "domain": "pynomaly.domain",
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY_MODULES:
        value = importlib.import_module(_LAZY_MODULES[name])
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'pynomaly' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_MODULES))
