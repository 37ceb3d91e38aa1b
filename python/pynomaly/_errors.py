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


class RepositoryError(PynomalyError):
    """The home folder or its database cannot be used."""


class RepositoryUnavailableError(RepositoryError):
    """A database home's server cannot be reached now (down, restarting, network): worth
    retrying, unlike a damaged home. The HTTP face answers 503 and reports itself not ready."""


class NotFoundError(PynomalyError, KeyError):
    """Something asked for by name or id is not stored (a detector, a version, a dataset, a result)."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DetectorNotFoundError(NotFoundError):
    """No detector (or no such version of it) under that name."""

    @classmethod
    def for_name(cls, name, known, where: str = "") -> "DetectorNotFoundError":
        """The error for a name that is not among ``known``, suggesting the nearest (a typo is the
        usual cause) and ``pynomaly list``; every face (CLI, daemon, HTTP) words it this way."""
        import difflib

        close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return cls(f"no detector named {str(name)[:80]!r}{' in ' + where if where else ''}; {hint}"
                   "`pynomaly list` shows the detectors there")


class DatasetNotFoundError(NotFoundError):
    """No stored dataset with that id (or only its description is stored, not its rows)."""


class ResultNotFoundError(NotFoundError):
    """No stored detection result with that id."""


class ArtifactIntegrityError(PynomalyError):
    """An artifact or model file is missing, corrupted, or its signature does not match: it is refused."""


class ExportFileError(ArtifactIntegrityError):
    """An export file given to pynomaly (not one stored in the home) is not an intact export:
    the caller's input is at fault, so the HTTP face answers 400, not a storage error's 500."""


class UntrustedPickleError(ArtifactIntegrityError):
    """A pickled model not signed by this home's key: loading it would run whatever it holds.
    Only whoever holds the machine may decide to trust it (``pynomaly import --trust-pickle``)."""


class KeyRequiredError(RepositoryError):
    """An encrypted home's key is missing, unreadable or wrong: the message names what is missing."""


class LearnerConflictError(PynomalyError):
    """Another live process learns this streaming detector (it holds the detector's learner
    lease in the home): one learner per detector per home. The message names the holder;
    the HTTP face answers 409, the daemon ``bad_request``. Scoring without learning works."""
