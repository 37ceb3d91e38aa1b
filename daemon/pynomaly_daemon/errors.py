"""The daemon's errors, in pynomaly's hierarchy, and the one mapping from an exception to the
wire's error code (``pynomaly.wire.ERROR_CODES``). Exceptions are recognised by type."""

from __future__ import annotations

import logging

import pynomaly
from pynomaly import ArtifactIntegrityError, DetectorNotFoundError, DetectorNotReadyError, PynomalyError
from pynomaly import RepositoryError
from pynomaly.serving import DetectorUnavailable  # exists but cannot detect; shared with the HTTP API

log = logging.getLogger("pynomaly_daemon")

# No detector of that name, or no such version: the package's own error, under the name the
# daemon has always exported.
DetectorNotFound = DetectorNotFoundError


class RequestError(PynomalyError):
    """A request the daemon refuses, with the wire's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# Exception type -> error code, most specific first.
_CODES = (
    (RequestError, None),
    (DetectorNotFoundError, "unknown_detector"),
    (DetectorUnavailable, "unavailable"),
    (DetectorNotReadyError, "unavailable"),
    (ArtifactIntegrityError, "unavailable"),
    (RepositoryError, "unavailable"),
    (pynomaly.ModelFormatError, "unavailable"),
    (pynomaly.InvalidInputError, "bad_value"),
    # Another process learns the detector (its learner lease): the message names it.
    (pynomaly.LearnerConflictError, "bad_request"),
)


def classify(err: BaseException):
    """``(code, message)`` for an exception raised while answering a request; anything
    unexpected is logged with its traceback and answered as "internal"."""
    for cls, code in _CODES:
        if isinstance(err, cls):
            if code is None:
                return err.code, err.message
            return code, str(err)
    log.exception("internal error", exc_info=err)
    return "internal", f"{type(err).__name__}: {err}"
