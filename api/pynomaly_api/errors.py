"""The HTTP face's one error format: what each failure becomes (status, message, headers),
for the inference protocol, the detection API and the pages alike."""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from starlette.responses import Response

from pynomaly._errors import ArtifactIntegrityError, ExportFileError, NotFoundError, PynomalyError, RepositoryError
from pynomaly._errors import LearnerConflictError, RepositoryUnavailableError
from pynomaly.domain import DetectorNotReadyError
from pynomaly.serving import DetectorUnavailable

from . import tensors
from .tokens import ForbiddenError, TokenError

log = logging.getLogger("pynomaly_api")


class HTTPError(Exception):
    """An error answered with this status and message (no traceback, ever)."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def status_of(err: BaseException):
    """``(status, message, headers)`` for an exception raised while answering a request."""
    if isinstance(err, HTTPError):
        return err.status, err.message, err.headers
    if isinstance(err, TokenError):
        return 401, str(err), {"WWW-Authenticate": 'Bearer realm="pynomaly"'}
    if isinstance(err, ForbiddenError):
        return 403, str(err), None
    if isinstance(err, NotFoundError):
        return 404, str(err), None
    if isinstance(err, (DetectorNotReadyError, DetectorUnavailable, LearnerConflictError)):
        return 409, str(err), None
    if isinstance(err, RepositoryUnavailableError):  # the database is away: retry later
        log.warning("database unavailable: %s", err)
        return 503, str(err), {"Retry-After": "1"}
    if isinstance(err, ExportFileError):  # an uploaded export file: the caller's input
        return 400, str(err), None
    if isinstance(err, (ArtifactIntegrityError, RepositoryError)):
        log.error("storage error: %s", err)
        return 500, f"storage error: {err}", None
    if isinstance(err, (ValueError, PynomalyError)):  # bad input: InvalidInputError, TensorError, ...
        return 400, str(err), None
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return 504, "the request took longer than the server's request timeout", None
    log.error("internal error", exc_info=err)
    return 500, f"internal error ({type(err).__name__}); the server log has the details", None


def error_response(err: BaseException) -> Response:
    status, message, headers = status_of(err)
    return Response(tensors.encode({"error": message}), status_code=status, media_type="application/json",
                    headers=headers)


__all__ = ["HTTPError", "status_of", "error_response"]
