"""The ASGI app, assembled: Open Inference Protocol v2 on a plain Starlette app (the per-request
path that load meets; :mod:`.oip`), the detection API on FastAPI mounted under it
(:mod:`.detection`; its OpenAPI schema at ``/openapi.json``), the pages (:mod:`.web`), one
error format for all (:mod:`.errors`) and the state they share (:mod:`.state`).

Detection goes through the data plane (:mod:`pynomaly.serving.dataplane`) and the service
layer's :class:`~pynomaly.service.Scorer`, with the same :class:`~pynomaly.serving.ModelCache`
as the daemon's: this face adds HTTP, not a second way to detect.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Optional

from starlette.applications import Starlette
from starlette.routing import Mount

from pynomaly._errors import PynomalyError
from pynomaly.serving import preload

from . import oip, tensors
from .errors import HTTPError, error_response
from .settings import Settings
from .state import ServerState
from .tokens import ForbiddenError, TokenError


def create_app(settings: Optional[Settings] = None):
    """The ASGI app for ``settings`` (default: from ``PYNOMALY_API_SETTINGS``)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import detection, learning, spool, web  # web: the pages (issue 11), sign-in at /, pages under /ui/

    settings = (settings or Settings.from_env()).check()
    state = ServerState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # What is loaded by now (the app, FastAPI's models, NumPy, the package) lives as long as
        # the process: move it out of the collector's sight, so that the collections that
        # per-request garbage triggers stop walking some 70k long-lived objects.
        preload()  # the code requests reach, imported before the first of them
        gc.collect()
        gc.freeze()
        spool.clean_stale(settings)  # files of uploads a killed server left behind
        state.start()
        yield
        await state.learning.stop()  # what streaming detectors learned and did not save yet
        state.close()

    # The protocol's routes on a bare Starlette app, the detection API on FastAPI mounted under
    # it: inference requests never pass through FastAPI's router (which, among other things,
    # asks OpenTelemetry for its providers on every request when that is installed).
    api = FastAPI(
        title="pynomaly",
        summary="Anomaly detection over HTTP: Open Inference Protocol v2 (/v2/..., see the protocol's "
        "specification) and the detection API",
        version=_version(),
        # Swagger UI and ReDoc load their scripts from a CDN (FastAPI's wheel has no copy): a
        # page of ours running another host's code, and none on a box without internet. The
        # schema stays at /openapi.json for any viewer or client generator.
        docs_url=None, redoc_url=None,
    )
    api.state.pynomaly = state
    api.include_router(detection.router)
    api.include_router(learning.router)
    api.openapi = lambda: _openapi(api)

    app = Starlette(routes=[*oip.oip_routes(), *web.routes(), Mount("/", app=api)], lifespan=lifespan)
    app.state.pynomaly = state

    async def on_error(request, exc):
        return error_response(exc)

    async def on_validation(request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()[:5]
        )
        return error_response(HTTPError(400, f"bad request: {problems}"))

    async def on_http(request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, RecursionError):  # FastAPI's "error parsing the body" of a too deep JSON
            return error_response(HTTPError(400, tensors.too_deep_message()))
        return error_response(HTTPError(exc.status_code, str(exc.detail), getattr(exc, "headers", None)))

    api.add_exception_handler(RequestValidationError, on_validation)
    for a in (api, app):
        a.add_exception_handler(StarletteHTTPException, on_http)
        for cls in (Exception, PynomalyError, ValueError, TokenError, ForbiddenError, HTTPError, asyncio.TimeoutError):
            a.add_exception_handler(cls, on_error)
    return app


def _openapi(api) -> dict:
    """FastAPI's document without the 422 it adds to every route with parameters: this server
    answers a request that fails validation with 400 and the error format of every other error
    (the statuses it does answer are declared by the routes)."""
    if api.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=api.title, version=api.version, summary=api.summary, routes=api.routes)
        for ops in doc.get("paths", {}).values():
            for op in ops.values():
                op.get("responses", {}).pop("422", None)
        schemas = doc.get("components", {}).get("schemas", {})
        if not any("ValidationError" in str(op) for ops in doc["paths"].values() for op in ops.values()):
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
        api.openapi_schema = doc
    return api.openapi_schema


def _version() -> str:
    from pynomaly import __version__

    return __version__


__all__ = ["create_app"]
