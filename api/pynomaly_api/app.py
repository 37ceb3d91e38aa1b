"""The ASGI app: Open Inference Protocol v2 on a plain Starlette app (the per-request path
that load meets), the detection API on FastAPI mounted under it (its OpenAPI schema at
``/openapi.json``), one error format for both, and the state they share.

Detection goes through the service layer's :class:`~pynomaly.service.Scorer`, kept in the
same :class:`~pynomaly.serving.ModelCache` as the daemon's: this face adds HTTP, not a
second way to detect. Small requests are scored on the event loop (a thread hand-off costs
more than scoring a few rows: the native core takes microseconds); larger ones in a thread
pool, where the native core runs without the GIL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import time
import zlib

import numpy as np
from typing import Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from pynomaly import service
from pynomaly._errors import ArtifactIntegrityError, ExportFileError, NotFoundError, PynomalyError, RepositoryError
from pynomaly._errors import RepositoryUnavailableError
from pynomaly.domain import DetectorNotReadyError
from pynomaly.serving import DetectorUnavailable, ModelCache, RepositorySource

from . import tensors
from .settings import Settings
from .tokens import ANONYMOUS, ForbiddenError, Principal, TokenError, Verifier, bearer

log = logging.getLogger("pynomaly_api")

SERVER_NAME = "pynomaly"
EXTENSIONS = ["binary_tensor_data", "statistics"]


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
    if isinstance(err, (DetectorNotReadyError, DetectorUnavailable)):
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


class ServerState:
    """What every request handler shares: settings, token checks, the Scorer cache, threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = service.home_path(settings.home)
        self.revocations = None
        self.verifier = None
        if settings.auth:
            from pynomaly.store.revocations import RevocationList

            self.revocations = RevocationList(self.home)
            self.verifier = Verifier(self.home, settings.public_keys, issuer=settings.issuer,
                                     audience=settings.audience, role_claim=settings.role_claim,
                                     revocations=self.revocations)
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.threads or os.cpu_count() or 1, thread_name_prefix="pynomaly-api")
        # What the server has done since it started (GET /api/v1/stats; per process).
        self.counters = {"cache_hits": 0, "cache_misses": 0, "infer_requests": 0, "infer_errors": 0,
                         "rows_scored": 0, "streamed_requests": 0, "started": time.time()}
        self.errors_by_code: dict = {}  # infer error replies by HTTP status (pynomaly_errors_total{code})
        # Per detector version, for OIP v2 statistics: [successes, their ns, failures, their ns,
        # rows, last inference (Unix ms)].
        self.model_stats: dict = {}
        self.cache = ModelCache(RepositorySource(str(self.home)), self.run, max_bytes=settings.cache_bytes,
                                refresh_interval=settings.refresh_interval_s, counters=self.counters)
        from pynomaly.serving.observe import Observer

        from .audit import Auditor

        self.audit = Auditor(self.home, self.run)
        # Metrics and alert rules (issue 12): every detection counted per detector, the rules
        # fed from a thread of their own (never SQLite on the event loop), alerts delivered.
        self.observer = Observer(str(self.home))
        self.job_workers: list = []
        self.ready = True  # False once draining
        from pynomaly.store._home import is_database_url

        # A database home's readiness also asks the database, at most once a second.
        self._database_home = is_database_url(self.home)
        self._database_ok, self._database_checked = True, float("-inf")

    def start(self) -> None:
        """At start-up, on the event loop: alert hand-overs, in-process job workers, and the
        cache told of other processes' new versions (a database home: NOTIFY)."""
        self.observer.start(asyncio.get_running_loop())
        if self.revocations is not None:
            self.revocations.start()
        self.cache.follow_source(asyncio.get_running_loop())
        if self.settings.job_workers:
            from pynomaly.service import jobs

            self.job_workers = jobs.start_workers(str(self.home), self.settings.job_workers)

    async def is_ready(self) -> bool:
        """Started, not draining, and for a database home: its server answered within the
        last second. A replica that lost the database leaves its Service until it is back,
        while liveness (the process answers) keeps it from being restarted."""
        if not self.ready:
            return False
        if self._database_home and time.monotonic() - self._database_checked >= 1.0:
            self._database_checked = time.monotonic()
            self._database_ok = await self.run(self._database_answers)
        return self._database_ok

    def _database_answers(self) -> bool:
        try:
            service.check_reachable(self.home)
            return True
        except RepositoryError as e:
            log.warning("not ready: %s", e)
            return False

    def run(self, fn, *args):
        """``fn(*args)`` in the scoring threads, as an awaitable."""
        return asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def authorize(self, request: Request, action: str) -> Principal:
        """The caller, allowed to do ``action``; TokenError (401) or ForbiddenError (403)."""
        return self.allow(request.headers.get("authorization"), action, request.scope)

    def allow(self, authorization: Optional[str], action: str, scope) -> Principal:
        """The caller an ``Authorization`` header value names, allowed to do ``action``;
        refusals go to the audit trail (``scope``: the request's, for where it came from)."""
        if self.verifier is None:
            return ANONYMOUS
        p = None
        try:
            p = self.verifier.verify(bearer(authorization))
            p.require(action)
        except (TokenError, ForbiddenError) as e:
            self.audit.refused(scope.get("client"), p.subject if p is not None else None,
                               403 if isinstance(e, ForbiddenError) else 401, str(e), scope.get("path", ""))
            raise
        return p

    async def scorer(self, name: str, version: Optional[int]) -> service.Scorer:
        cache = self.cache
        s = cache.hot.get((name, version)) or cache.cached(name, version)
        if s is None:
            return await cache.resolve(name, version)
        if version is not None:
            cache.pinned.add((name, version))  # asked for by number: kept when superseded
        return s

    def close(self) -> None:
        self.ready = False
        for w in self.job_workers:
            w.shutdown()  # the running job is re-queued for the next worker
        self.observer.stop()
        if self.revocations is not None:
            self.revocations.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)


def state_of(request: Request) -> ServerState:
    return request.app.state.pynomaly


# -- request bodies -------------------------------------------------------------------------
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _content_length(headers, limit: int) -> Optional[int]:  # headers: any mapping with .get
    """The declared body length (None when not declared); 413 beyond ``limit``."""
    length = headers.get("content-length")
    if length is None:
        return None
    try:
        n = int(length)
    except ValueError:
        raise HTTPError(400, "Content-Length must be an integer") from None
    if n > limit:
        raise HTTPError(413, f"the body has {n} bytes; this server accepts at most {limit}")
    return n


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (413 beyond, also after decompression)."""
    _content_length(request.headers, limit)
    return await _read_body(request.stream(), limit, request.headers.get("content-encoding"))


async def _read_body(stream, limit: int, encoding: Optional[str]) -> bytes:
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"the body is larger than this server accepts ({limit} bytes)")
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if encoding and encoding.lower() != "identity":
        wbits = _ENCODINGS.get(encoding.lower())
        if wbits is None:
            raise HTTPError(415, f"Content-Encoding {encoding[:20]!r} is not accepted (gzip, deflate)")
        d = zlib.decompressobj(wbits)
        try:
            body = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise HTTPError(400, f"the body is not valid {encoding}: {e}") from None
        if len(body) > limit or d.unconsumed_tail:
            raise HTTPError(413, f"the body is larger than this server accepts ({limit} bytes) once decompressed")
    return body


class deadline:
    """``with deadline(seconds):`` inside a coroutine: cancel it after ``seconds`` and raise
    TimeoutError there. What ``asyncio.timeout`` does, as a plain context manager with one
    timer (a tenth of its cost per request; this runs on every request), and on every Python.
    """

    __slots__ = ("seconds", "handle", "task", "fired")

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        self.task = asyncio.current_task()
        self.fired = False
        self.handle = asyncio.get_running_loop().call_later(self.seconds, self._fire)
        return self

    def _fire(self) -> None:
        self.fired = True
        self.task.cancel()

    def __exit__(self, exc_type, exc, tb):
        self.handle.cancel()
        if self.fired:
            uncancel = getattr(self.task, "uncancel", None)  # 3.11+: this cancel was ours
            if uncancel is not None:
                uncancel()
            if exc_type is asyncio.CancelledError:
                raise TimeoutError(f"the request took longer than {self.seconds:g} s") from None
        return False


def parse_version(text: Optional[str]) -> Optional[int]:
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 19 or int(text) < 1:
        raise HTTPError(400, f"model version must be a positive integer, got {text[:20]!r}")
    return int(text)


# -- Open Inference Protocol v2 --------------------------------------------------------------
def _json(doc, status: int = 200) -> Response:
    return Response(tensors.encode(doc), status_code=status, media_type="application/json")


async def health_live(request: Request) -> Response:
    return _json({"live": True})


async def health_ready(request: Request) -> Response:
    ready = await state_of(request).is_ready()
    return _json({"ready": ready}, 200 if ready else 503)


async def server_metadata(request: Request) -> Response:
    from pynomaly import __version__

    return _json({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})


def _model_metadata(scorer: service.Scorer, versions) -> dict:
    v = scorer.version
    return {
        "name": v.name,
        "versions": [str(x) for x in versions],
        "platform": f"pynomaly_{v.algorithm}",
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, v.n_features]}],
        "outputs": [{"name": n, "datatype": dt, "shape": [-1]} for n, (dt, _) in tensors.OUTPUTS.items()],
        "parameters": {"threshold": v.threshold, "algorithm": v.algorithm,
                       "feature_names": list(v.feature_names) if v.feature_names else None},
    }


async def model_metadata(request: Request) -> Response:
    try:
        st = state_of(request)
        st.authorize(request, "read")
        name = request.path_params["name"]
        version = parse_version(request.path_params.get("version"))
        scorer = await st.scorer(name, version)
        if version is None:
            versions = [r["version"] for r in await st.run(service.versions, st.home, name)]
        else:
            versions = [version]
        return _json(_model_metadata(scorer, versions))
    except Exception as e:  # noqa: BLE001 - every failure is answered in the protocol's error format
        return error_response(e)


async def model_ready(request: Request) -> Response:
    try:
        st = state_of(request)
        st.authorize(request, "read")
        await st.scorer(request.path_params["name"], parse_version(request.path_params.get("version")))
        return _json({"name": request.path_params["name"], "ready": True})
    except Exception as e:  # noqa: BLE001
        return error_response(e)


def _answer(scorer: service.Scorer, req: tensors.InferRequest, scores=None):
    """Score the request's rows (unless ``scores`` are given) and pick its outputs (runs on the
    loop or in a thread): ``(outputs, scores)``."""
    if scores is None:
        scores = scorer.score(req.rows)
    p = req.parameters
    if not p and req.outputs == tensors.DEFAULT_OUTPUTS:  # the commonest request: the version's own threshold
        return {"scores": scores, "labels": scorer.labels(scores)}, scores
    d = scorer.decide(scores, req.outputs, threshold=p.get("threshold"), contamination=p.get("contamination"))
    return {name: getattr(d, name) for name in req.outputs}, scores


# What an infer body may be labelled: JSON, JSON with binary data after it, or what a client
# sends when it does not say (curl -d: form-urlencoded; some clients: text/plain).
_JSON_TYPES = ("application/json", "application/octet-stream", "application/x-www-form-urlencoded", "text/plain")


# Binary requests at least this large are scored while they arrive, in blocks of about
# BLOCK_BYTES of rows on the scoring threads (several at once: a large request uses every
# core), instead of after the last byte: reading 16 MB through the server's 64 KB flow-control
# window takes about as long as scoring it.
STREAM_BYTES = 1 << 20
BLOCK_BYTES = 1 << 20


class ClientGone(Exception):
    """The client disconnected before its request was read."""


async def body_chunks(receive):
    """The chunks of a request body from an ASGI ``receive``."""
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            raise ClientGone("the client disconnected before sending its whole request")
        body = m.get("body", b"")
        if body:
            yield body
        if not m.get("more_body", False):
            return


async def _scored_while_arriving(st: ServerState, receive, scorer: service.Scorer, hlen: int, length: int):
    """``(InferRequest, scores)`` of a binary request read and scored block by block, or
    ``(None, body)`` when its header shows JSON data after all (read whole, for decode_infer)."""
    stream = body_chunks(receive)
    pending = bytearray()
    async for chunk in stream:
        pending += chunk
        if len(pending) >= hlen:
            break
    if len(pending) < hlen:
        raise HTTPError(400, f"the body ended before the {hlen}-byte JSON header (Inference-Header-Content-Length)")
    plan = tensors.plan_binary(bytes(pending[:hlen]), hlen, length, scorer.version.n_features)
    if plan is None:  # JSON data after all: finish reading and decode as usual
        async for chunk in stream:
            pending += chunk
        return None, bytes(pending)
    del pending[:hlen]
    row_bytes = plan.dtype.itemsize * plan.n_features
    block = max(1, BLOCK_BYTES // max(row_bytes, 1)) * row_bytes
    parts, received = [], hlen + len(pending)

    def submit(final: bool) -> None:
        nonlocal pending
        while len(pending) >= block or (final and pending):
            take = min(len(pending), block)
            if take % row_bytes:
                raise HTTPError(400, "the binary tensor data does not end on a whole row")
            parts.append(st.run(scorer.score, plan.rows(bytes(pending[:take]))))
            pending = pending[take:]

    try:
        submit(False)
        async for chunk in stream:
            received += len(chunk)
            if received > length:
                raise HTTPError(400, f"the body is longer than its Content-Length ({length})")
            pending += chunk
            submit(False)
        if received != length:
            raise HTTPError(400, f"the body ended after {received} of its {length} bytes")
        submit(True)
        scores = [await p for p in parts]
    except BaseException:
        for p in parts:
            p.cancel()
        await asyncio.gather(*parts, return_exceptions=True)  # no block is left running unobserved
        raise
    req = plan.request
    return req, (np.concatenate(scores) if scores else np.empty(0))


# The headers an infer request may carry that matter here, read in one pass over the raw list
# (Starlette's Headers scans it again for every lookup).
_INFER_HEADERS = frozenset({b"authorization", b"content-type", b"content-length", b"content-encoding",
                            b"inference-header-content-length"})


async def _respond(send, body: bytes, content_type: bytes, extra=()) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *extra]})
    await send({"type": "http.response.body", "body": body})


async def infer(scope, receive, send) -> None:
    """``POST /v2/models/{name}[/versions/{v}]/infer``: a plain ASGI endpoint (no Request or
    Response objects: this is the path that load meets)."""
    st: ServerState = scope["app"].state.pynomaly
    started = time.perf_counter_ns()
    scorer = None
    try:
        with deadline(st.settings.request_timeout_s):
            h = {k: v.decode("latin-1") for k, v in scope["headers"] if k in _INFER_HEADERS}
            st.allow(h.get(b"authorization"), "detect", scope)
            ctype = h.get(b"content-type")
            if ctype and not ctype.lower().startswith(_JSON_TYPES):
                raise HTTPError(415, f"Content-Type {ctype[:60]!r} is not accepted: send an inference request as "
                                "JSON (application/json), with binary tensor data after it if you like")
            params = scope["path_params"]
            scorer = await st.scorer(params["name"], parse_version(params.get("version")))
            hlen = h.get(b"inference-header-content-length")
            limit = st.settings.max_body_bytes
            length = _content_length({"content-length": h.get(b"content-length")}, limit)
            encoding = h.get(b"content-encoding")
            req = body = None
            if (hlen is not None and length is not None and length >= STREAM_BYTES and scorer.rows_independent
                    and not encoding):
                n = tensors.header_length(hlen, length)
                req, scores = await _scored_while_arriving(st, receive, scorer, n, length)
                if req is None:
                    body = scores
                else:
                    st.counters["streamed_requests"] += 1
                    outputs, scores = _answer(scorer, req, scores)
            if req is None:
                if body is None:
                    body = await _read_body(body_chunks(receive), limit, encoding)
                req = tensors.decode_infer(body, hlen, scorer.version.n_features)
                if req.rows.size <= st.settings.inline_cells:
                    outputs, scores = _answer(scorer, req)
                else:
                    outputs, scores = await st.run(_answer, scorer, req)
            v = scorer.version
            st.cache.used(v.name, v.version, 1, time.monotonic())
            st.observer.scored_request(v, scores)  # metrics and alert rules
            c = st.counters
            c["infer_requests"] += 1
            c["rows_scored"] += scores.shape[0]
            out, hlen = tensors.encode_infer(v.name, v.version, req.id, outputs, req.binary)
            s = st.model_stats.get((v.name, v.version)) or st.model_stats.setdefault((v.name, v.version),
                                                                                     [0, 0, 0, 0, 0, 0])
            s[0] += 1
            s[1] += time.perf_counter_ns() - started
            s[4] += scores.shape[0]
            s[5] = int(time.time() * 1000)
    except Exception as e:  # noqa: BLE001 - answered in the protocol's error format
        st.counters["infer_errors"] += 1
        reply = error_response(e)
        st.errors_by_code[reply.status_code] = st.errors_by_code.get(reply.status_code, 0) + 1
        if scorer is not None:  # a failure of a model that exists (Triton counts no others)
            key = (scorer.version.name, scorer.version.version)
            s = st.model_stats.setdefault(key, [0, 0, 0, 0, 0, 0])
            s[2] += 1
            s[3] += time.perf_counter_ns() - started
        await reply(scope, receive, send)
        return
    if hlen is None:
        await _respond(send, out, b"application/json")
    else:
        await _respond(send, out, b"application/octet-stream", [(b"inference-header-content-length", b"%d" % hlen)])


def _statistics(st: ServerState, key) -> dict:
    """One model version's entry in the shape of Triton's statistics extension (what
    ``tritonclient``'s ``get_inference_statistics`` reads). This process's inferences only;
    the whole request is timed (``success``, ``fail``), so its parts (queue, compute_*) are 0."""
    ok, ok_ns, fail, fail_ns, rows, last = st.model_stats.get(key, (0, 0, 0, 0, 0, 0))
    zero = {"count": 0, "ns": 0}
    return {
        "name": key[0], "version": str(key[1]), "last_inference": last, "inference_count": rows,
        "execution_count": ok,
        "inference_stats": {"success": {"count": ok, "ns": ok_ns}, "fail": {"count": fail, "ns": fail_ns},
                            "queue": zero, "compute_input": zero, "compute_infer": zero, "compute_output": zero,
                            "cache_hit": zero, "cache_miss": zero},
        "batch_stats": [],
    }


async def model_statistics(request: Request) -> Response:
    """``GET /v2/models[/{name}[/versions/{v}]]/stats``: the statistics extension of KServe v2 /
    Triton, for every model version this process has served, or for one model (its versions)."""
    try:
        st = state_of(request)
        st.authorize(request, "read")
        name = request.path_params.get("name")
        version = parse_version(request.path_params.get("version"))
        keys = sorted(st.model_stats)
        if name is not None:
            scorer = await st.scorer(name, version)  # 404 for a model or version that does not exist
            keys = [k for k in keys if k[0] == name and version in (None, k[1])] or [(name, scorer.version.version)]
        return _json({"model_stats": [_statistics(st, k) for k in keys]})
    except Exception as e:  # noqa: BLE001
        return error_response(e)


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: Prometheus text (role viewer; scrapers send a token like any client)."""
    from pynomaly.service import metrics

    try:
        st = state_of(request)
        st.authorize(request, "read")
        own = server_metrics(st)  # read here, on the loop, where they change
        body = await st.run(_render_metrics, st, own)
        return Response(body, media_type=metrics.CONTENT_TYPE)
    except Exception as e:  # noqa: BLE001
        return error_response(e)


def server_metrics(st: ServerState) -> list:
    from pynomaly.service import metrics

    c, cache = st.counters, st.cache

    def frozen(value):
        return lambda: value

    return [
        metrics.Counter.of("pynomaly_requests", "Requests received, by operation", ("op",),
                           {("infer",): c["infer_requests"] + c["infer_errors"]}),
        # By code, as the daemon's (PROTOCOL.md): here the HTTP status of the infer replies.
        metrics.Counter.of("pynomaly_errors", "Infer error replies, by HTTP status", ("code",),
                           {(str(code),): n for code, n in st.errors_by_code.items()}),
        metrics.Counter.of("pynomaly_streamed_requests", "Binary infer requests scored while they arrived", (),
                           {(): c["streamed_requests"]}),
        metrics.Counter.of("pynomaly_model_cache_hits", "Detector lookups answered by the cache", (),
                           {(): c["cache_hits"]}),
        metrics.Counter.of("pynomaly_model_cache_misses", "Detector lookups that loaded a detector", (),
                           {(): c["cache_misses"]}),
        metrics.Gauge("pynomaly_model_cache_bytes", "Memory of the loaded detectors", fn=frozen(cache.size)),
        metrics.Gauge("pynomaly_model_cache_entries", "Loaded detector versions", fn=frozen(len(cache))),
        metrics.Gauge("pynomaly_uptime_seconds", "Seconds since this server process started",
                      fn=frozen(time.time() - c["started"])),
        *st.observer.metrics(),
    ]


def _render_metrics(st: ServerState, own: list) -> bytes:
    """Our metrics, the home's jobs, and the process's (alerts sent, durations of the service's
    detections). Runs in a thread: it reads the database."""
    from pynomaly.service import metrics

    own = own + metrics.jobs_collector(str(st.home))()
    names = {m.exposed for m in own}
    rest = [m for m in metrics.REGISTRY.collect() if m.exposed not in names]
    return metrics.render(metrics.Registry(), own + rest)


class _ASGIEndpoint:
    """An endpoint that a Route calls as a plain ASGI app (Starlette wraps functions in
    Request/Response objects)."""

    def __init__(self, fn):
        self.fn = fn

    async def __call__(self, scope, receive, send):
        await self.fn(scope, receive, send)


def oip_routes() -> list:
    """The protocol's routes, the busiest first (routes are matched in order)."""
    raw_infer = _ASGIEndpoint(infer)
    return [
        Route("/v2/models/{name}/infer", raw_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", raw_infer, methods=["POST"]),
        Route("/v2/health/live", health_live, methods=["GET"]),
        Route("/v2/health/ready", health_ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        # Before /v2/models/{name}: "stats" is the statistics extension's word, not a model.
        Route("/v2/models/stats", model_statistics, methods=["GET"]),
        Route("/v2/models/{name}/stats", model_statistics, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/stats", model_statistics, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


# -- the app --------------------------------------------------------------------------------
def create_app(settings: Optional[Settings] = None):
    """The ASGI app for ``settings`` (default: from ``PYNOMALY_API_SETTINGS``)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import detection, spool

    settings = (settings or Settings.from_env()).check()
    state = ServerState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # What is loaded by now (the app, FastAPI's models, NumPy, the package) lives as long as
        # the process: move it out of the collector's sight, so that the collections that
        # per-request garbage triggers stop walking some 70k long-lived objects.
        gc.collect()
        gc.freeze()
        spool.clean_stale(settings)  # files of uploads a killed server left behind
        state.start()
        yield
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
    api.openapi = lambda: _openapi(api)
    from . import web  # the web pages (issue 11): sign-in at /, pages under /ui/

    app = Starlette(routes=[*oip_routes(), *web.routes(), Mount("/", app=api)], lifespan=lifespan)
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


__all__ = ["create_app", "ServerState", "HTTPError", "read_body", "status_of"]
