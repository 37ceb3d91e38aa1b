"""pynomaly: native-accelerated anomaly detection with PyOD's conventions.

Importing pynomaly loads only NumPy and the native core; optional integrations (PyOD,
PyTorch, JAX) are imported when used.
"""

from __future__ import annotations

import os as _os

from ._errors import (
    ArtifactIntegrityError,
    DatasetNotFoundError,
    DetectorNotFoundError,
    InvalidInputError,
    KeyRequiredError,
    ModelFormatError,
    NotFittedError,
    NotFoundError,
    PynomalyError,
    RepositoryError,
    ResultNotFoundError,
    UntrustedPickleError,
)
from . import _core
from .iforest import IsolationForest
from .neighbors import KNN, LOF, knn  # k-nearest neighbours (issue 3)

# -- domain model (issue 5): plain classes over NumPy; registry, repository, service and the
# adapters stay submodules (pynomaly.registry, pynomaly.service, ...) imported when used.
from .domain import (
    AnomalyScore,
    ContaminationRate,
    DetectionResult,
    Detector,
    DetectorNotReadyError,
    DetectorStatus,
)
# -- scores to decisions (issue 4): normalisation, thresholds, combination --------------------
from . import combine, scores

__version__ = "0.1.0"
__all__ = [
    "IsolationForest",
    "LOF",
    "KNN",
    "knn",
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
    info = dict(_core.build_info())
    info["version"] = __version__
    return info


# -- daemon clients (issue 6): loaded on first attribute access so `import pynomaly` stays cheap.
_LAZY = {"Client": "client", "AsyncClient": "client", "DaemonError": "client", "Detection": "client"}


# Submodules the README uses as ``pynomaly.<name>`` after a plain ``import pynomaly``; imported
# on first access (the service layer pulls in SQLite and zstandard, which scoring never needs).
_LAZY_MODULES = ("service", "registry", "repository", "wire", "client", "dataio", "datasets", "adapters", "domain",
                 "jobs", "alerts", "metrics")


def __getattr__(name: str):
    import importlib

    if name in _LAZY_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pynomaly' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def _apply_simd_override() -> None:
    want = _os.environ.get("PYNOMALY_SIMD", "").strip().lower()
    if want:
        if want not in ("baseline", "avx2", "avx512", "neon"):
            raise ImportError(f"PYNOMALY_SIMD={want!r} is not a SIMD target; accepted: baseline, avx2, avx512, neon")
        try:
            _core.set_simd(want)
        except InvalidInputError as e:  # valid name, but this CPU cannot run it: keep the best
            import warnings

            warnings.warn(f"PYNOMALY_SIMD={want!r} ignored: {e}", RuntimeWarning, stacklevel=2)


_apply_simd_override()
