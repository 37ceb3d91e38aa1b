"""Detectors backed by optional libraries: PyOD, PyTorch and JAX.

Nothing here imports those libraries at module import time; each adapter imports its library
in ``fit``/``from_bytes`` through :func:`require`, which turns a missing one into a
:class:`MissingExtraError` naming the extra to install (both live in :mod:`pynomaly._optional`,
where the store's parquet reader finds them too).
"""

from __future__ import annotations

from pynomaly._optional import MissingExtraError, require

__all__ = ["MissingExtraError", "require"]
