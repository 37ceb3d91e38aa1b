"""Importing, before a server serves, the code its requests reach.

``import pynomaly`` stays light by importing the model loaders, the score normalisers, the
export-file reader and the alert and metrics code on first use. A server should not: its first
request would pay for those imports, and a server that drops privileges after it starts (a
daemon started as root), or whose installed files are replaced while it runs, would fail that
request on a file it can no longer read. Each face calls :func:`preload` once before it serves.

What is imported is pynomaly's own code only: PyOD, torch and JAX are imported when a model of
theirs is first loaded (``import pynomaly`` never loads them, and a server of native models
should not either).
"""

from __future__ import annotations

import importlib

__all__ = ["preload", "SERVED_WITH"]

# Every module a detection, a listing or an observed request can import on first use. A test
# (tests/daemon/test_daemon_security.py) serves from a daemon that may import nothing after it
# starts: a module missing here fails it.
SERVED_WITH = (
    "pynomaly.estimators.registry",
    "pynomaly.estimators._format",
    "pynomaly.estimators.iforest",
    "pynomaly.estimators.neighbors",
    "pynomaly.estimators.scores",
    "pynomaly.estimators.adapters.pyod",
    "pynomaly.estimators.adapters.torch",
    "pynomaly.estimators.adapters.jax",
    "pynomaly.store.exportfile",
    "pynomaly.store.crypto",
    "pynomaly.store.repository",
    "pynomaly.store.audit",
    "pynomaly.service.transfer",
    "pynomaly.service.alerts",
    "pynomaly.service.metrics",
    "pynomaly.service.drift",
)


def preload() -> None:
    """Import :data:`SERVED_WITH` (cheap once done: a second call costs a dict lookup each)."""
    for name in SERVED_WITH:
        importlib.import_module(name)
