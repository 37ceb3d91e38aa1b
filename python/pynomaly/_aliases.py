"""The import paths modules had before the package was put in layers (issue 21).

A user's code, a joblib file of a detector (which names ``pynomaly.iforest.IsolationForest``)
or a registry string may still name a module by its old path. Each old path is the *same
module object* as the new one (not a copy that would make a second class of the same name), so
``pickle``, ``isinstance`` and monkeypatching behave as before. One table, one finder on
``sys.meta_path``; nothing is imported until an old name is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old public path -> where it lives now (a package alias covers its submodules)
MOVED = {
    "pynomaly.base": "pynomaly.estimators.base",
    "pynomaly.iforest": "pynomaly.estimators.iforest",
    "pynomaly.neighbors": "pynomaly.estimators.neighbors",
    "pynomaly.combine": "pynomaly.estimators.combine",
    "pynomaly.scores": "pynomaly.estimators.scores",
    "pynomaly.registry": "pynomaly.estimators.registry",
    "pynomaly.adapters": "pynomaly.estimators.adapters",
    "pynomaly.dask": "pynomaly.estimators.dask",
    "pynomaly.stream": "pynomaly.estimators.stream",  # not a move: the streaming detectors' public path
    "pynomaly.repository": "pynomaly.store.repository",
    "pynomaly.crypto": "pynomaly.store.crypto",
    "pynomaly.exportfile": "pynomaly.store.exportfile",
    "pynomaly.datasets": "pynomaly.store.datasets",
    "pynomaly.dataio": "pynomaly.store.dataio",
    "pynomaly.audit": "pynomaly.store.audit",
    "pynomaly.revocations": "pynomaly.store.revocations",
    "pynomaly.scorer": "pynomaly.service.scorer",
    "pynomaly.jobs": "pynomaly.service.jobs",
    "pynomaly.alerts": "pynomaly.service.alerts",
    "pynomaly.metrics": "pynomaly.service.metrics",
    "pynomaly.quickstart": "pynomaly.cli.quickstart",
}


def target(name: str):
    """The module an old path now names, or None for a path that did not move."""
    if not name.startswith("pynomaly."):  # every import in the process asks: answer most at once
        return None
    top = name.split(".", 2)
    old = f"{top[0]}.{top[1]}"
    new = MOVED.get(old)
    return None if new is None else new + name[len(old):]


class _Same(importlib.abc.Loader):
    def __init__(self, real: str):
        self.real = real

    def create_module(self, spec):
        return importlib.import_module(self.real)

    def exec_module(self, module):
        pass  # already executed under its own name

    def get_code(self, fullname):
        # `python -m` an old path (python -m pynomaly.quickstart) runs the module's own code
        return importlib.util.find_spec(self.real).loader.get_code(self.real)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target_module=None):
        real = target(name)
        if real is None:
            return None
        return importlib.util.spec_from_loader(name, _Same(real))


_FINDER = _Finder()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (first, so a submodule of an aliased package
    is never found a second time by the path finder under its old name)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
