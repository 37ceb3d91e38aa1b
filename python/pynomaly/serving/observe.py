"""What a serving face's detections feed besides their replies: metrics and alert rules
(issue 12); shared by the daemon and the HTTP API.

Every path that scores counts per detector, cheaply, where it scores: the daemon's native loop
and uvloop fast path in C++ (requests, rows, and a tally of anomalies: how many, in how many
requests, the highest anomalous score and rate; see ``Tally`` in python/src/fastpath_serve.hpp),
the Python path here from the scores it already holds. :class:`Observer` sums those per
detector and, every :data:`INTERVAL` seconds, hands the detectors that had anomalies to the
alert rules (:class:`pynomaly.alerts.Evaluator`) in a thread of its own: SQLite is never
touched on the event loop, and a detection without anomalies costs a comparison per row.

An alert from the daemon is about the detections of one detector within one interval (summed:
anomalies, rows, detections; the highest score and rate), which the alerts' deduplication
window would merge anyway. Between a detection and its rules' outbox write lies at most one
interval (plus the write); from the outbox on nothing is lost (pynomaly.alerts).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pynomaly.service import alerts, metrics

log = logging.getLogger("pynomaly.serving")

INTERVAL = 0.25  # seconds between hand-overs to the alert rules


class Observer:
    """Per-detector counts of the daemon's detections, for metrics and alerts."""

    def __init__(self, home=None, *, alerts_on: bool = True, interval: float = INTERVAL):
        # Cumulative, for the metrics: {name: [detections, rows, anomalies]}.
        self.totals: dict = {}
        # Since the last hand-over, detectors with anomalies only: {name: [detections, rows,
        # anomalies, max_score, max_rate, version]}.
        self.window: dict = {}
        self.interval = interval
        self.evaluator = alerts.Evaluator(home) if alerts_on and home is not None else None
        self.dispatcher = alerts.Dispatcher(home) if self.evaluator is not None else None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="pynomaly-alerts-eval") if self.evaluator else None
        self._handle = None
        self.loop = None
        self.dropped = 0
        # Each detector's (detections, rows) at the last hand-over: its clean detections since.
        self._seen: dict = {}

    # -- counting (event-loop thread) -------------------------------------------------------
    def add(self, name: str, version, requests: int, rows: int, flagged) -> None:
        """Requests of one detector scored elsewhere (C++); ``flagged`` is None or
        ``(anomalies, requests with one, max score, max rate)``."""
        t = self.totals.get(name)
        if t is None:
            t = self.totals[name] = [0, 0, 0]
        t[0] += requests
        t[1] += rows
        if flagged is not None:
            anomalies, n_flagged, top, rate = flagged
            t[2] += anomalies
            self._flag(name, version, requests, rows, anomalies, top, rate)

    def count(self, name: str, rows: int, anomalies: int) -> None:
        """One detection made through the service (whose alert rules it has run already): in
        the metrics only."""
        t = self.totals.get(name)
        if t is None:
            t = self.totals[name] = [0, 0, 0]
        t[0] += 1
        t[1] += rows
        t[2] += anomalies

    def scored(self, version, items, scores: np.ndarray, flags: np.ndarray) -> None:
        """A batch scored on the Python path: ``items`` with ``.n`` rows each, in order (None:
        one request), and its ``flags`` at the version's threshold (decided by the data plane,
        :mod:`pynomaly.serving.dataplane`; not decided again here)."""
        name = version.name
        t = self.totals.get(name)
        if t is None:
            t = self.totals[name] = [0, 0, 0]
        n = scores.shape[0]
        requests = 1 if items is None else len(items)
        t[0] += requests
        t[1] += n
        k = int(np.count_nonzero(flags))
        if not k:
            return
        t[2] += k
        top = float(scores[flags].max())
        if items is None:
            rate = k / n
        else:
            rate = 0.0
            off = 0
            for it in items:
                kq = int(np.count_nonzero(flags[off : off + it.n]))
                if kq:
                    rate = max(rate, kq / it.n)
                off += it.n
        self._flag(name, version.version, requests, n, k, top, rate)

    def _flag(self, name, version, requests, rows, anomalies, top, rate) -> None:
        if self.evaluator is None:
            return
        w = self.window.get(name)
        if w is None:
            self.window[name] = [requests, rows, anomalies, top, rate, version]
        else:
            w[0] += requests
            w[1] += rows
            w[2] += anomalies
            w[3] = max(w[3], top)
            w[4] = max(w[4], rate)
            w[5] = version

    # -- hand-over ----------------------------------------------------------------------------
    def start(self, loop) -> None:
        self.loop = loop
        if self.evaluator is not None:
            self.dispatcher.start()
            self._handle = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._tick)
        self.hand_over()

    def hand_over(self) -> None:
        """Give the detectors that had detections since the last call to the alert rules: those
        with anomalies, and those without (which may clear a firing alert: resolved messages)."""
        window, self.window = self.window, {}
        now = time.time()
        obs = [alerts.Observation(name, w[0], w[1], w[2], w[3], w[4], w[5], now) for name, w in window.items()]
        seen = self._seen
        for name, t in self.totals.items():
            before = seen.get(name, (0, 0))
            if t[0] != before[0]:
                seen[name] = (t[0], t[1])
                if name not in window:
                    obs.append(alerts.Observation(name, t[0] - before[0], t[1] - before[1], 0, float("-inf"), 0.0,
                                                  None, now))
        if obs:
            self._writer.submit(self._evaluate, obs)

    def _evaluate(self, observations) -> None:
        queued = 0
        for obs in observations:
            try:
                queued += len(self.evaluator.observe(obs))
            except Exception as e:  # noqa: BLE001 - logged; the next detections are evaluated again
                log.warning("alert rules of %r not evaluated: %s", obs.detector, e)
        if queued:
            self.dispatcher.wake()

    def stop(self) -> None:
        """Hand over what is counted, wait for the rules to queue it, stop delivering."""
        if self._handle is not None:
            self._handle.cancel()
        if self.evaluator is not None:
            self.hand_over()
            self._writer.shutdown(wait=True)
            self.dispatcher.wake()
            self.dispatcher.stop()
            self.evaluator.close()

    # -- metrics ------------------------------------------------------------------------------
    def metrics(self) -> list:
        t = dict(self.totals)
        return [
            metrics.Counter.of("pynomaly_detections", "Detect requests answered, by detector", ("detector",),
                               {(k,): v[0] for k, v in t.items()}),
            metrics.Counter.of("pynomaly_rows_scored", "Rows scored, by detector", ("detector",),
                               {(k,): v[1] for k, v in t.items()}),
            metrics.Counter.of("pynomaly_anomalies", "Rows labelled anomalous, by detector", ("detector",),
                               {(k,): v[2] for k, v in t.items()}),
        ]


__all__ = ["Observer", "INTERVAL"]
