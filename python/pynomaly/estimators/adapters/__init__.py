"""Detectors backed by optional libraries: PyOD, PyTorch and JAX.

Nothing here imports those libraries at module import time; each adapter imports its library
in ``fit``/``from_bytes`` through :func:`require`, which turns a missing one into a
:class:`MissingExtraError` naming the extra to install.
"""

from __future__ import annotations

import importlib

from pynomaly._errors import PynomalyError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(PynomalyError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, extra: str):
    """Import ``module`` or raise MissingExtraError telling to ``pip install pynomaly[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module} is not installed (needed by this detector); install it with: pip install 'pynomaly[{extra}]'"
            f" ({e})"
        ) from None
