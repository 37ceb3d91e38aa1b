"""Metrics in the Prometheus text format, without needing prometheus_client.

The process keeps its counters in :data:`REGISTRY` (plain Python numbers, updated where the
work happens: detections, alert deliveries, jobs); a face renders them with :func:`render`
(``GET /metrics`` of the HTTP server, the daemon's ``--metrics-port`` and its ``metrics``
op). Where prometheus_client is installed (the ``metrics`` extra), :func:`register_prometheus`
adds the same metrics to its registry instead, for an application that already serves one.
Importing pynomaly never imports prometheus_client.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms, base
units). Label values are bounded: detector names and the like beyond :data:`MAX_SERIES`
series per metric are counted under ``"_other"``, so a stream of new names cannot grow a
metric without bound. Values may be updated from any thread (a lock per metric).
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Iterable, Optional

__all__ = [
    "CONTENT_TYPE",
    "MAX_SERIES",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
    "REGISTRY",
    "render",
    "register_prometheus",
    "observe_detection",
    "jobs_collector",
    "count_jobs_with",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SERIES = 1000
OTHER = "_other"

# Request durations: 50 us to 10 s (a single-row detect is tens of microseconds).
DURATION_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v != v:
        return "NaN"
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v)}.0"
    return repr(float(v))


def _labels(names, values, extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()):
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._values: dict = {}

    def _key(self, labels: dict) -> tuple:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        key = tuple(str(labels[n]) for n in self.labelnames)
        if key not in self._values and len(self._values) >= MAX_SERIES:
            key = tuple(OTHER for _ in self.labelnames)
        return key

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


class Counter(_Metric):
    """A monotonically increasing count; the exposed name ends in ``_total``."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            k = self._key(labels)
            self._values[k] = self._values.get(k, 0.0) + amount

    @classmethod
    def of(cls, name: str, help: str, labelnames, values: dict) -> "Counter":
        """A counter holding ``values`` ({label values tuple: count}) read from elsewhere, with
        the series beyond :data:`MAX_SERIES` summed under ``"_other"``."""
        c = cls(name, help, labelnames)
        for k, v in values.items():
            k = k if isinstance(k, tuple) else (k,)
            if k not in c._values and len(c._values) >= MAX_SERIES:
                k = tuple(OTHER for _ in c.labelnames)
            c._values[k] = c._values.get(k, 0.0) + v
        return c

    def value(self, **labels) -> float:
        return self._values.get(tuple(str(labels[n]) for n in self.labelnames), 0.0)

    def samples(self):
        with self._lock:
            items = list(self._values.items())
        return [("_total" if not self.name.endswith("_total") else "", self.labelnames, k, v) for k, v in items]

    @property
    def exposed(self) -> str:
        return self.name if self.name.endswith("_total") else self.name + "_total"


class Gauge(_Metric):
    """A value that goes up and down; or, with ``fn``, read when rendered (``fn() -> {labels
    tuple: value}`` or a number)."""

    kind = "gauge"

    def __init__(self, name, help, labelnames=(), fn: Optional[Callable] = None):
        super().__init__(name, help, labelnames)
        self.fn = fn

    def set(self, value: float, **labels) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def samples(self):
        if self.fn is not None:
            got = self.fn()
            items = list(got.items()) if isinstance(got, dict) else [((), got)]
        else:
            with self._lock:
                items = list(self._values.items())
        return [("", self.labelnames, k, v) for k, v in items]

    exposed = property(lambda self: self.name)


class Histogram(_Metric):
    """Observations counted in cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name, help, labelnames=(), buckets=DURATION_BUCKETS):
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets))

    def observe(self, value: float, **labels) -> None:
        with self._lock:
            k = self._key(labels)
            h = self._values.get(k)
            if h is None:
                h = self._values[k] = [0] * len(self.buckets) + [0, 0.0]  # counts per bucket, count, sum
            for i, b in enumerate(self.buckets):
                if value <= b:
                    h[i] += 1
                    break
            h[-2] += 1
            h[-1] += value

    def add(self, counts, total: float, **labels) -> None:
        """Merge observations counted elsewhere: ``counts[i]`` fell in bucket i (not cumulative;
        one more for values above the last bucket), ``total`` is their sum."""
        with self._lock:
            k = self._key(labels)
            h = self._values.get(k)
            if h is None:
                h = self._values[k] = [0] * len(self.buckets) + [0, 0.0]
            for i, c in enumerate(counts[: len(self.buckets)]):
                h[i] += c
            h[-2] += sum(counts)
            h[-1] += total

    def samples(self):
        with self._lock:
            items = [(k, list(h)) for k, h in self._values.items()]
        out = []
        names = self.labelnames + ("le",)
        for k, h in items:
            acc = 0
            for b, c in zip(self.buckets, h):
                acc += c
                out.append(("_bucket", names, k + (_num(b),), acc))
            out.append(("_bucket", names, k + ("+Inf",), h[-2]))
            out.append(("_count", self.labelnames, k, h[-2]))
            out.append(("_sum", self.labelnames, k, h[-1]))
        return out

    exposed = property(lambda self: self.name)


class Registry:
    """Metrics and collectors rendered together. A collector is a callable returning metrics
    (objects with ``samples()``), called at each render: values read from elsewhere (a
    daemon's counters, the jobs table) cost nothing between scrapes."""

    def __init__(self):
        self.metrics: list = []
        self.collectors: list = []
        self._lock = threading.Lock()

    def register(self, metric):
        with self._lock:
            self.metrics.append(metric)
        return metric

    def add_collector(self, fn: Callable[[], Iterable]) -> Callable:
        with self._lock:
            self.collectors.append(fn)
        return fn

    def remove_collector(self, fn) -> None:
        with self._lock:
            if fn in self.collectors:
                self.collectors.remove(fn)

    def collect(self) -> list:
        with self._lock:
            metrics, collectors = list(self.metrics), list(self.collectors)
        out = list(metrics)
        for fn in collectors:
            out.extend(fn())
        return out

    def counter(self, name, help, labelnames=()) -> Counter:
        return self.register(Counter(name, help, labelnames))

    def gauge(self, name, help, labelnames=(), fn=None) -> Gauge:
        return self.register(Gauge(name, help, labelnames, fn))

    def histogram(self, name, help, labelnames=(), buckets=DURATION_BUCKETS) -> Histogram:
        return self.register(Histogram(name, help, labelnames, buckets))


REGISTRY = Registry()

# What the service layer counts in every process (the daemon adds its own at render time).
REQUESTS = REGISTRY.counter("pynomaly_requests", "Requests answered, by operation and outcome code", ("op", "code"))
REQUEST_SECONDS = REGISTRY.histogram("pynomaly_request_duration_seconds", "Time to answer a request", ("op",))
ROWS = REGISTRY.counter("pynomaly_rows_scored", "Rows scored, by detector", ("detector",))
ANOMALIES = REGISTRY.counter("pynomaly_anomalies", "Rows labelled anomalous, by detector", ("detector",))
ALERTS_SENT = REGISTRY.counter("pynomaly_alerts_sent", "Alert deliveries, by channel and outcome "
                               "(sent, retry, dead, deduplicated)", ("channel", "outcome"))
JOB_SECONDS = REGISTRY.histogram("pynomaly_job_duration_seconds", "Time a job ran, by kind and final state",
                                 ("kind", "state"), JOB_BUCKETS)


def observe_detection(detector: str, rows: int, anomalies: int, seconds: Optional[float] = None,
                      op: str = "detect") -> None:
    """Count one detection in :data:`REGISTRY` (the service layer and HTTP faces call this)."""
    ROWS.inc(rows, detector=detector)
    if anomalies:
        ANOMALIES.inc(anomalies, detector=detector)
    REQUESTS.inc(op=op, code="ok")
    if seconds is not None:
        REQUEST_SECONDS.observe(seconds, op=op)


# The jobs gauge reads the jobs table through service.jobs, which itself counts in this module:
# jobs hands its reader over when it loads (the service package loads it), so that this leaf of
# the service layer imports nothing of ours.
_job_counts: Optional[Callable[[object], dict]] = None


def count_jobs_with(counts: Callable[[object], dict]) -> None:
    """Set the reader of :func:`jobs_collector`: ``counts(home) -> {state: number of jobs}``."""
    global _job_counts
    _job_counts = counts


def jobs_collector(home, counts: Optional[Callable[[object], dict]] = None) -> Callable[[], list]:
    """A collector for ``pynomaly_jobs{state}`` read from the jobs table of ``home`` by
    ``counts`` (the faces pass ``pynomaly.service.jobs.counts``, so their gauge does not hang
    on which modules happen to be loaded; None: the reader jobs registered when it loaded)."""

    def collect():
        read = counts or _job_counts
        if read is None:
            return []
        try:
            n = read(home)
        except Exception:  # noqa: BLE001 - a scrape must not fail for a busy database
            return []
        return [Gauge("pynomaly_jobs", "Jobs by state", ("state",), fn=lambda: {(s,): v for s, v in n.items()})]

    return collect


def render(registry: Registry = REGISTRY, extra: Iterable = ()) -> bytes:
    """The metrics of ``registry`` (and ``extra`` metrics) in the Prometheus text format 0.0.4
    (serve it with :data:`CONTENT_TYPE`)."""
    lines = []
    seen = set()
    for m in list(registry.collect()) + list(extra):
        name = m.exposed
        if name in seen:  # one family per name: the first wins
            continue
        seen.add(name)
        lines.append(f"# HELP {name} {_escape_help(m.help)}")
        lines.append(f"# TYPE {name} {m.kind}")
        for suffix, names, values, v in m.samples():
            sample = m.name + suffix if suffix else name
            lines.append(f"{sample}{_labels(names, values)} {_num(float(v))}")
    return ("\n".join(lines) + "\n").encode()


def register_prometheus(registry: Registry = REGISTRY, prometheus_registry=None):
    """Expose ``registry`` through prometheus_client (the ``metrics`` extra): a custom collector
    added to ``prometheus_registry`` (default its global REGISTRY). Returns the collector."""
    try:
        from prometheus_client import REGISTRY as PROM
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        raise ImportError("register_prometheus needs prometheus_client: pip install 'pynomaly[metrics]'") from None

    class _Collector:
        def collect(self):
            yield from text_string_to_metric_families(render(registry).decode())

    collector = _Collector()
    (prometheus_registry or PROM).register(collector)
    return collector
