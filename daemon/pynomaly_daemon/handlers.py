"""The operations other than ``detect``: one coroutine each, ``handler(daemon, request) -> reply``,
and the table that maps each request type to its handler. ``detect`` has its own paths
(server.py, batching.py, the native path) because it is the hot one.
"""

from __future__ import annotations

import asyncio

import os
import time

import pynomaly
from pynomaly import wire


def detector_info(scorer, loaded: bool = True) -> wire.DetectorInfo:
    """What ``info`` and ``list`` say about a loaded Scorer."""
    v = scorer.version
    return wire.DetectorInfo(v.name, v.version, v.algorithm, v.n_features, v.threshold, loaded, scorer.size_bytes,
                             v.status)


async def health(d, req: wire.Health) -> wire.HealthReply:
    return wire.HealthReply(
        req.id, "draining" if d.draining else "ok", pynomaly.__version__, wire.PROTOCOL_VERSION,
        os.getpid(), time.monotonic() - d.started,
    )


async def stats(d, req: wire.Stats) -> wire.StatsReply:
    c, n = d.counters, d.native_counters()  # the native connection loop counts its own requests
    return wire.StatsReply(
        req.id, time.monotonic() - d.started, d.n_connections(), c["connections_total"] + n["connections_total"],
        d.admission.requests, {**d.requests, "detect": d.n_detect + n["requests"]}, dict(d.errors),
        c["rows_scored"] + n["rows"], c["native_calls"] + n["calls"], c["coalesced_requests"] + n["coalesced"],
        len(d.cache), d.cache.size, c["cache_hits"], c["cache_misses"], c["copied_rows"],
        c["fast_path_requests"] + n["requests"],
    )


async def info(d, req: wire.Info) -> wire.InfoReply:
    return wire.InfoReply(req.id, detector_info(await d.plane.scorer(req.detector, req.version)))


async def list_detectors(d, req: wire.ListDetectors) -> wire.ListReply:
    out = []
    for rec in await d.run(d.cache.source.list):
        s = d.cache.entries.get((rec.name, rec.version))
        if s is not None:
            status, rec = rec.status, detector_info(s)
            rec.status = status
        out.append(rec)
    return wire.ListReply(req.id, out)


async def reload(d, req: wire.Reload) -> wire.ReloadReply:
    names = d.cache.invalidate(req.detector)
    d.log.info("reload%s: dropped %d cached version(s)", f" {req.detector!r}" if req.detector else "", len(names))
    return wire.ReloadReply(req.id, names)


async def metrics(d, req: wire.Metrics) -> wire.MetricsReply:
    from pynomaly.service.metrics import CONTENT_TYPE

    from .metrics_http import render

    return wire.MetricsReply(req.id, (await render(d)).decode(), CONTENT_TYPE)


async def drift(d, req: wire.Drift) -> wire.DriftReply:
    from pynomaly.serving import RepositorySource
    from pynomaly.service import drift as service_drift

    from .errors import RequestError

    if not isinstance(d.source, RepositorySource):
        raise RequestError("unavailable", "drift needs a repository home (--home): a folder of model files keeps no "
                           "references and no live window")
    opts = {k: v for k, v in (("method", req.method), ("psi_threshold", req.psi_threshold), ("alpha", req.alpha),
                              ("min_rows", req.min_rows)) if v is not None}
    if d.observer is not None:  # what this daemon scored just before counts, on every path
        if d.netloop is not None:
            d.netloop.flush_hits()
        await asyncio.wrap_future(d.observer.hand_over_drift())
    doc = await d.run(lambda: service_drift.report(d.source.home, req.detector, version=req.version,
                                                   window=req.window, **opts))
    return wire.DriftReply(req.id, doc)


HANDLERS = {
    wire.Drift: drift,
    wire.Metrics: metrics,
    wire.Health: health,
    wire.Stats: stats,
    wire.Info: info,
    wire.ListDetectors: list_detectors,
    wire.Reload: reload,
}
