"""One registry: algorithm name -> detector class, for every kind of detector.

- native: ``"IsolationForest"``, ``"LOF"``, ``"KNN"``, and the streaming detectors
  ``"HalfSpaceTrees"`` and ``"OnlineIsolationForest"`` (``pynomaly.stream``);
- ``"pyod.<ClassName>"``: any installed PyOD detector, wrapped by ``PyODDetector``
  (``"pyod.IForest"`` with ``use_native=True`` is scored by the native forest);
- ``"TorchAutoEncoder"``: PyTorch autoencoder; ``"JaxDeepSVDD"``: JAX Deep SVDD.

Entries name a module and class and are imported on first use, so ``import pynomaly`` never
loads PyOD, torch or JAX. A new algorithm is one line in ``_ENTRIES``.
"""

from __future__ import annotations

import importlib

from pynomaly._errors import InvalidInputError

__all__ = ["get", "create", "names", "kind", "is_known", "stored_defaults", "reports_progress"]

# name -> (module, class, kind). kind says which optional extra the detector needs.
_ENTRIES = {
    "IsolationForest": ("pynomaly.estimators.iforest", "IsolationForest", "native"),
    "LOF": ("pynomaly.estimators.neighbors", "LOF", "native"),
    "KNN": ("pynomaly.estimators.neighbors", "KNN", "native"),
    "HalfSpaceTrees": ("pynomaly.estimators.stream", "HalfSpaceTrees", "native"),
    "OnlineIsolationForest": ("pynomaly.estimators.stream", "OnlineIsolationForest", "native"),
    "TorchAutoEncoder": ("pynomaly.estimators.adapters.torch", "TorchAutoEncoder", "torch"),
    "JaxDeepSVDD": ("pynomaly.estimators.adapters.jax", "JaxDeepSVDD", "jax"),
}
_PYOD_PREFIX = "pyod."

# Parameters a *stored* detector gets unless given: a stored detector exists to score new data,
# which LOF only does with novelty=True (applied by pynomaly.service.train, not by create()).
_STORED_DEFAULTS = {"LOF": {"novelty": True}}


def _import_entry(name: str):
    module, cls, _ = _ENTRIES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return None


def names() -> list:
    """Registered algorithm names whose code is present (``pyod.<ClassName>`` is open-ended and
    listed as ``"pyod.<ClassName>"``)."""
    out = [n for n, (_, _, k) in _ENTRIES.items() if k != "native" or _import_entry(n) is not None]
    return out + [_PYOD_PREFIX + "<ClassName>"]


def kind(name: str) -> str:
    """"native", "pyod", "torch" or "jax" for a registry name."""
    if name.startswith(_PYOD_PREFIX):
        return "pyod"
    if name in _ENTRIES:
        return _ENTRIES[name][2]
    raise _unknown(name)


def is_known(name: str) -> bool:
    """Whether ``name`` is a registry name (without importing anything optional)."""
    return name.startswith(_PYOD_PREFIX) and len(name) > len(_PYOD_PREFIX) or name in _ENTRIES


def get(name: str):
    """The detector class for ``name``; for ``pyod.<X>`` the ``PyODDetector`` wrapper.

    Raises InvalidInputError for an unknown name and MissingExtraError when its extra is not
    installed (checked when the detector is created or fitted).
    """
    if not isinstance(name, str):
        raise InvalidInputError(f"algorithm must be a string, got {name!r}")
    if name.startswith(_PYOD_PREFIX) and len(name) > len(_PYOD_PREFIX):
        from pynomaly.estimators.adapters.pyod import PyODDetector

        return PyODDetector
    if name in _ENTRIES:
        cls = _import_entry(name)
        if cls is None:
            raise InvalidInputError(f"algorithm {name!r} is not available in this build of pynomaly")
        return cls
    raise _unknown(name)


def create(name: str, **params):
    """A new, unfitted detector for registry name ``name`` with keyword parameters ``params``.

    For ``pyod.<X>``, ``contamination`` and ``use_native`` go to the wrapper and every other
    parameter to PyOD's class. Unknown parameters raise InvalidInputError.
    """
    cls = get(name)
    if name.startswith(_PYOD_PREFIX):
        from pynomaly.estimators.adapters import require
        from pynomaly.estimators.adapters.pyod import pyod_class

        require("pyod", "pyod")
        model = name[len(_PYOD_PREFIX):]
        pyod_class(model)  # unknown class names fail here, not at fit time
        wrapper = {k: params.pop(k) for k in ("contamination", "use_native") if k in params}
        return cls(model=model, params=params or None, **wrapper)
    if kind(name) in ("torch", "jax"):
        from pynomaly.estimators.adapters import require

        require(kind(name), kind(name))  # fail early, naming the extra
    try:
        return cls(**params)
    except TypeError:
        valid = sorted(cls._param_names())
        bad = sorted(set(params) - set(valid))
        raise InvalidInputError(f"{name} has no parameter(s) {bad}; valid parameters: {valid}") from None


def reports_progress(name: str) -> bool:
    """Whether the detector's ``fit`` takes a ``progress(fraction)`` callback."""
    import inspect

    return "progress" in inspect.signature(get(name).fit).parameters


def stored_defaults(name: str) -> dict:
    """Parameters :func:`pynomaly.service.train` adds when not given (e.g. LOF novelty=True)."""
    return dict(_STORED_DEFAULTS.get(name, {}))


def _unknown(name) -> InvalidInputError:
    known = ", ".join(n for n in _ENTRIES) + ", pyod.<ClassName>"
    return InvalidInputError(f"unknown algorithm {name!r}; known: {known}")
