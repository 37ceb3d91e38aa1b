"""The daemon's metrics: its counters read on the event loop, and the text that ``--metrics-port``
and the ``metrics`` op serve. The per-detector counting that feeds metrics and alert rules is
:class:`pynomaly.serving.observe.Observer`, shared with the HTTP API."""

from __future__ import annotations

import time

from pynomaly.service import metrics
from pynomaly.serving.observe import INTERVAL, Observer


def _frozen(value):
    return lambda: value


def daemon_metrics(d) -> list:
    """The daemon's counters as metrics, read now (call it on the event loop, where they
    change). Nothing is counted twice: the native loop's counts are added to the Python
    path's, as the ``stats`` op does."""
    c, n = d.counters, d.native_counters()
    requests = {**d.requests, "detect": d.n_detect + n["requests"]}
    out = [
        metrics.Counter.of("pynomaly_requests", "Requests received, by operation", ("op",),
                           {(op,): v for op, v in requests.items()}),
        metrics.Counter.of("pynomaly_errors", "Error replies and dropped clients, by error code", ("code",),
                           {(code,): v for code, v in d.errors.items()}),
        metrics.Counter.of("pynomaly_native_calls", "Calls into the native scoring core", (),
                           {(): c["native_calls"] + n["calls"]}),
        metrics.Counter.of("pynomaly_fast_path_requests", "Detect requests answered by native code without Python",
                           (), {(): c["fast_path_requests"] + n["requests"]}),
        metrics.Counter.of("pynomaly_connections_accepted", "Connections accepted", (),
                           {(): c["connections_total"] + n["connections_total"]}),
        metrics.Counter.of("pynomaly_model_cache_hits", "Detector lookups answered by the cache", (),
                           {(): c["cache_hits"]}),
        metrics.Counter.of("pynomaly_model_cache_misses", "Detector lookups that loaded a detector", (),
                           {(): c["cache_misses"]}),
        metrics.Gauge("pynomaly_connections", "Open client connections", fn=_frozen(d.n_connections())),
        metrics.Gauge("pynomaly_in_flight_requests", "Requests admitted and not yet answered",
                      fn=_frozen(d.admission.requests)),
        metrics.Gauge("pynomaly_model_cache_bytes", "Memory of the loaded detectors", fn=_frozen(d.cache.size)),
        metrics.Gauge("pynomaly_model_cache_entries", "Loaded detector versions", fn=_frozen(len(d.cache))),
        metrics.Gauge("pynomaly_uptime_seconds", "Seconds since the daemon started",
                      fn=_frozen(time.monotonic() - d.started)),
    ]
    if d.observer is not None:
        out += d.observer.metrics()
    return out


def finish_render(d, own: list) -> bytes:
    """The text of ``own`` (from :func:`daemon_metrics`), the jobs of a repository home and the
    process's metrics (alerts sent, in-daemon jobs, durations of the other ops). Runs in a
    thread: it reads the database."""
    from pynomaly.service import drift, jobs
    from pynomaly.serving import RepositorySource

    if isinstance(d.source, RepositorySource):
        own = own + metrics.jobs_collector(d.source.home, jobs.counts)() + drift.collector(d.source.home)()
    names = {m.exposed for m in own}
    rest = [m for m in metrics.REGISTRY.collect() if m.exposed not in names]
    return metrics.render(metrics.Registry(), own + rest)


__all__ = ["Observer", "daemon_metrics", "finish_render", "INTERVAL"]
