"""The package's exception hierarchy, rooted at :class:`PynomalyError`.

Bad arguments and bad data are ``ValueError`` subclasses, so code written against
scikit-learn or PyOD (``except ValueError``) keeps working.
"""


class PynomalyError(Exception):
    """Base class of every error raised on purpose by pynomaly."""


class InvalidInputError(PynomalyError, ValueError):
    """Input data or an argument is not acceptable (shape, dtype, NaN/inf, range)."""


class NotFittedError(PynomalyError, ValueError, AttributeError):
    """A detector was used before ``fit`` (same bases as scikit-learn's NotFittedError)."""


class ModelFormatError(PynomalyError, ValueError):
    """Serialized model bytes are truncated, corrupted, or of an unknown format/version."""
