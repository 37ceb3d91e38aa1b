"""Open Inference Protocol v2 on a plain Starlette app: health, server and model metadata,
``infer`` (JSON and binary tensors; the per-request path that load meets), the statistics
extension, and ``/metrics``.

An infer request takes the data plane (:mod:`pynomaly.serving.dataplane`): the Scorer is looked
up in the cache the daemon's is, scored (small requests on the event loop, where a thread
hand-off would cost more than the native core's microseconds; larger ones in the thread pool,
where the core runs without the GIL; large binary ones while they arrive), decided by the one
rule and counted for the metrics and alert rules; this module reads and writes the protocol's
tensors around it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pynomaly import service
from pynomaly.service.metrics import time_detection
from pynomaly.serving.learning import learns

from . import tensors
from .body import body_chunks, content_length, deadline, parse_version, read_stream
from .errors import HTTPError, error_response
from .state import ServerState, state_of

SERVER_NAME = "pynomaly"
EXTENSIONS = ["binary_tensor_data", "statistics"]


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
        "outputs": [{"name": n, "datatype": dt, "shape": [-1, v.n_features] if n == "attributions" else [-1]}
                    for n, (dt, _, _) in tensors.OUTPUTS.items()],
        "parameters": {"threshold": v.threshold, "algorithm": v.algorithm,
                       "feature_names": list(v.feature_names) if v.feature_names else None},
    }


async def model_metadata(request: Request) -> Response:
    try:
        st = state_of(request)
        st.authorize(request, "read")
        name = request.path_params["name"]
        version = parse_version(request.path_params.get("version"))
        scorer = await st.plane.scorer(name, version)
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
        await st.plane.scorer(request.path_params["name"], parse_version(request.path_params.get("version")))
        return _json({"name": request.path_params["name"], "ready": True})
    except Exception as e:  # noqa: BLE001
        return error_response(e)


def _answer(scorer: service.Scorer, req: tensors.InferRequest, scores=None):
    """Score the request's rows (unless ``scores`` are given) and, when it asks for more than
    the default outputs, decide them (runs on the loop or in a thread): ``(scores, result)``,
    result None for the default outputs (the data plane's result answers those, on the loop)."""
    if scores is None:
        scores = scorer.score(req.rows)
    p = req.parameters
    if not p and req.outputs == tensors.DEFAULT_OUTPUTS:  # the commonest request: the version's own threshold
        return scores, None
    explanation = None
    if "attributions" in req.outputs:
        explanation = scorer.explain(req.rows, p.get("explain_method"))
    elif p.get("explain_method") is not None:
        raise tensors.TensorError("the parameter explain_method applies to the output 'attributions'; ask for it")
    return scores, scorer.decide(scores, req.outputs, threshold=p.get("threshold"), contamination=p.get("contamination"),
                                 explanation=explanation)


# What an infer body may be labelled: JSON, JSON with binary data after it, or what a client
# sends when it does not say (curl -d: form-urlencoded; some clients: text/plain).
_JSON_TYPES = ("application/json", "application/octet-stream", "application/x-www-form-urlencoded", "text/plain")


# Binary requests at least this large are scored while they arrive, in blocks of about
# BLOCK_BYTES of rows on the scoring threads (several at once: a large request uses every
# core), instead of after the last byte: reading 16 MB through the server's 64 KB flow-control
# window takes about as long as scoring it.
STREAM_BYTES = 1 << 20
BLOCK_BYTES = 1 << 20


async def _scored_while_arriving(st: ServerState, receive, scorer: service.Scorer, hlen: int, length: int):
    """``(InferRequest, scores, drift sample)`` of a binary request read and scored block by
    block, or ``(None, body, None)`` when its header shows JSON data after all (read whole, for
    decode_infer). The sample: ``(rows, scores)`` of every k-th row of the request (the rows a
    batch's drift profile takes, :meth:`Observer.drift_step`), kept as the blocks go by; None
    when drift is not counted."""
    stream = body_chunks(receive)
    pending = bytearray()
    async for chunk in stream:
        pending += chunk
        if len(pending) >= hlen:
            break
    if len(pending) < hlen:
        raise HTTPError(400, f"the body ended before the {hlen}-byte JSON header (Inference-Header-Content-Length)")
    plan = tensors.plan_binary(bytes(pending[:hlen]), hlen, length, scorer.version.n_features)
    if plan is None or "attributions" in plan.request.outputs:
        # JSON data after all, or attributions (they need the rows, kept whole): finish
        # reading and decode as usual
        async for chunk in stream:
            pending += chunk
        return None, bytes(pending), None
    del pending[:hlen]
    row_bytes = plan.dtype.itemsize * plan.n_features
    block = max(1, BLOCK_BYTES // max(row_bytes, 1)) * row_bytes
    parts, received = [], hlen + len(pending)
    step = st.observer.drift_step(plan.n_rows)
    kept = []  # per block: (its rows kept for drift, where they start in it)

    def submit(final: bool) -> None:
        nonlocal pending
        while len(pending) >= block or (final and pending):
            take = min(len(pending), block)
            if take % row_bytes:
                raise HTTPError(400, "the binary tensor data does not end on a whole row")
            first = plan.done
            rows = plan.rows(bytes(pending[:take]))
            if step:
                kept.append((rows[-first % step::step].copy(), -first % step))
            parts.append(st.run(scorer.score, rows))
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
    sample = None
    if kept:
        sample = (np.concatenate([X for X, _ in kept]),
                  np.concatenate([s[at::step] for s, (_, at) in zip(scores, kept)]))
    return plan.request, (np.concatenate(scores) if scores else np.empty(0)), sample


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
            scorer = await st.plane.scorer(params["name"], parse_version(params.get("version")))
            hlen = h.get(b"inference-header-content-length")
            limit = st.settings.max_body_bytes
            length = content_length({"content-length": h.get(b"content-length")}, limit)
            encoding = h.get(b"content-encoding")
            req = body = sample = None
            streaming = learns(scorer)  # one request at a time, in order: never scored while arriving
            if (hlen is not None and length is not None and length >= STREAM_BYTES and scorer.rows_independent
                    and not encoding and not streaming):
                n = tensors.header_length(hlen, length)
                req, scores, sample = await _scored_while_arriving(st, receive, scorer, n, length)
                if req is None:
                    body = scores
                else:
                    st.counters["streamed_requests"] += 1
                    scores, result = _answer(scorer, req, scores)
            if req is None:
                if body is None:
                    body = await read_stream(body_chunks(receive), limit, encoding)
                req = tensors.decode_infer(body, hlen, scorer.version.n_features)
                learn = req.parameters.get("learn", False)
                if type(learn) is not bool:
                    raise HTTPError(400, f"parameter learn must be true or false, got {str(learn)[:40]!r}")
                if learn:
                    st.allow(h.get(b"authorization"), "learn", scope)
                if streaming or learn:
                    scorer, scores = await st.learned(scorer, req.rows, learn)
                    scores, result = _answer(scorer, req, scores)
                elif req.rows.size <= st.settings.inline_cells:
                    scores, result = _answer(scorer, req)
                else:
                    scores, result = await st.run(_answer, scorer, req)
            v = scorer.version
            st.cache.used(v.name, v.version, 1, time.monotonic())
            # The rule, once; counted for metrics and alert rules, and the rows for drift (for a
            # request scored while it arrived, rows None: its blocks are gone, the sample kept
            # of them is counted instead).
            decided = st.plane.decide(scorer, None, scores, req.rows)
            if sample is not None:
                st.observer.sampled(v, *sample, scores.shape[0])
            if result is None:
                result = decided
            c = st.counters
            c["infer_requests"] += 1
            c["rows_scored"] += scores.shape[0]
            out, hlen = tensors.encode_infer(v.name, v.version, req.id, result, req.outputs, req.binary)
            s = st.model_stats.get((v.name, v.version)) or st.model_stats.setdefault((v.name, v.version),
                                                                                     [0, 0, 0, 0, 0, 0])
            s[0] += 1
            s[1] += time.perf_counter_ns() - started
            s[4] += scores.shape[0]
            s[5] = int(time.time() * 1000)
            time_detection(v.name, "http", (time.perf_counter_ns() - started) * 1e-9)  # latency histogram
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
            scorer = await st.plane.scorer(name, version)  # 404 for a model or version that does not exist
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
    from pynomaly.service import drift, jobs, metrics

    own = own + metrics.jobs_collector(str(st.home), jobs.counts)() + drift.collector(str(st.home))()
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


__all__ = ["oip_routes", "infer", "server_metrics", "SERVER_NAME", "EXTENSIONS"]
