"""Optional libraries (PyOD, PyTorch, JAX, pyarrow), imported when first needed.

Any layer may need one (the estimators' adapters, the store's parquet files), so this sits at
the bottom with the errors: :func:`require` turns a missing library into a
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
