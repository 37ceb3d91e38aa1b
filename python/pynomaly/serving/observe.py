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
window would merge anyway. It says why with the first few anomalous rows of the interval
(:data:`~pynomaly.service.why.ALERT_ROWS`, copied where they were scored: here, or in
C++ next to the tally), explained with the detector's default method in the rules' thread and
only when a rule fires. Between a detection and its rules' outbox write lies at most one
interval (plus the write); from the outbox on nothing is lost (pynomaly.alerts).
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from pynomaly.estimators import drift as stats
from pynomaly.service import alerts, drift_live, metrics
from pynomaly.service.why import ALERT_ROWS, why_flagged

log = logging.getLogger("pynomaly.serving")

INTERVAL = 0.25  # seconds between hand-overs to the alert rules
# Rows per detector version and hand-over profiled for drift, at most: drift_live profiles a
# batch over settings.sample_above (1,024) rows on an even sample of about that many anyway,
# so keeping more (4,096 once) only copied rows that were then sampled away.
DRIFT_ROWS = 1024
# Rows the uvloop fast path keeps per hand-over (all detectors): each call that keeps some
# returns arrays to Python (a few microseconds), so few calls may (1,024 rows a second).
FAST_ROWS = 256


class Observer:
    """Per-detector counts of the daemon's detections, for metrics and alerts."""

    def __init__(self, home=None, *, alerts_on: bool = True, interval: float = INTERVAL, drift_home=None):
        # Cumulative, for the metrics: {name: [detections, rows, anomalies]}.
        self.totals: dict = {}
        # Since the last hand-over, detectors with anomalies only: {name: [detections, rows,
        # anomalies, max_score, max_rate, version, [(rows, scores) kept for the alert's why],
        # the Scorer that explains them]}.
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
        # Drift: {(name, version): [row blocks, score blocks, rows kept, rows served]} since the
        # last hand-over; None when drift is not counted.
        self.drift_home = drift_home
        self.drift: "dict | None" = {} if drift_home is not None else None
        self._counter = ThreadPoolExecutor(1, thread_name_prefix="pynomaly-drift-count") if self.drift is not None else None
        # Rows the uvloop fast path may still keep for drift until the next hand-over (its
        # calls return rows only while this is positive).
        self.fast_room = FAST_ROWS if self.drift is not None else 0

    # -- counting (event-loop thread) -------------------------------------------------------
    def add(self, name: str, version, requests: int, rows: int, flagged, why=None, scorer=None) -> None:
        """Requests of one detector scored elsewhere (C++); ``flagged`` is None or
        ``(anomalies, requests with one, max score, max rate)``; ``why`` None or the anomalous
        rows C++ kept, as drift's sample tuple ``(rows, scores, _, rows32, scores32)``, which
        ``scorer`` (the version's) explains if a rule fires."""
        t = self.totals.get(name)
        if t is None:
            t = self.totals[name] = [0, 0, 0]
        t[0] += requests
        t[1] += rows
        if flagged is not None:
            anomalies, n_flagged, top, rate = flagged
            t[2] += anomalies
            kept = None if why is None else [(X, s) for X, s in ((why[0], why[1]), (why[3], why[4])) if s.shape[0]]
            self._flag(name, version, requests, rows, anomalies, top, rate, kept, scorer)

    def count(self, name: str, rows: int, anomalies: int) -> None:
        """One detection made through the service (whose alert rules it has run already): in
        the metrics only."""
        t = self.totals.get(name)
        if t is None:
            t = self.totals[name] = [0, 0, 0]
        t[0] += 1
        t[1] += rows
        t[2] += anomalies

    def scored(self, version, items, scores: np.ndarray, flags: np.ndarray, X=None, scorer=None) -> None:
        """A batch scored on the Python path: ``items`` with ``.n`` rows each, in order (None:
        one request), and its ``flags`` at the version's threshold (decided by the data plane,
        :mod:`pynomaly.serving.dataplane`; not decided again here); ``X`` its rows, for drift
        (kept by reference until the next hand-over: the caller does not change them) and,
        copied, a few anomalous ones for an alert's why (explained by ``scorer``)."""
        name = version.name
        if self.drift is not None and X is not None:  # inline (as in sampled): every request passes here
            key = (name, version.version, X.dtype == np.float32)
            d = self.drift.get(key)
            if d is None:
                d = self.drift[key] = [[], [], 0, 0]
            n = scores.shape[0]
            d[3] += n
            if d[2] < DRIFT_ROWS:
                if n > drift_live.settings.sample_above:  # profiled on an even sample, as drift_live does
                    step = stats.sample_step(n, drift_live.settings.sample_above)
                    X, s = X[::step], scores[::step]
                else:
                    s = scores
                d[0].append(X)
                d[1].append(s)
                d[2] += s.shape[0]
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
        kept = None
        if X is not None and scorer is not None and self.evaluator is not None:
            w = self.window.get(name)
            room = ALERT_ROWS - (sum(s.shape[0] for _, s in w[6]) if w is not None else 0)
            if room > 0:
                idx = np.flatnonzero(flags)[:room]
                kept = [(X[idx], scores[idx])]  # copies: the rows outlive the request
        self._flag(name, version.version, requests, n, k, top, rate, kept, scorer)

    def drift_step(self, n: int) -> int:
        """Every how many rows of a batch of ``n`` a path that keeps its own sample keeps one
        (as :meth:`scored` samples); 0 when drift is not counted."""
        return stats.sample_step(n, drift_live.settings.sample_above) if self.drift is not None else 0

    def sampled(self, version, X, scores, served: int) -> None:
        """Drift rows of a batch of ``served`` rows whose path kept only ``X`` (and their
        ``scores``), an even sample as :meth:`scored` takes (a binary request scored while it
        arrived, whose rows are gone once scored: api/pynomaly_api/oip.py). Counts for drift
        only: the batch went through :meth:`scored` without its rows."""
        if self.drift is None:
            return
        key = (version.name, version.version, X.dtype == np.float32)
        d = self.drift.get(key)
        if d is None:
            d = self.drift[key] = [[], [], 0, 0]
        d[3] += served
        if d[2] < DRIFT_ROWS:
            d[0].append(X)
            d[1].append(scores)
            d[2] += scores.shape[0]

    def add_sample(self, name: str, version, sample, served: int) -> None:
        """Rows a native path served for ``name``'s ``version``: ``served`` of them, and
        ``sample`` None or ``(rows, scores, _, rows32, scores32)`` the ones it kept for drift
        (C++: the first :data:`DRIFT_ROWS` of each hand-over, float64 and float32 requests'
        apart; see ``Sample`` in python/src/fastpath_serve.hpp)."""
        if self.drift is None:
            return
        blocks = ((sample[0], sample[1]), (sample[3], sample[4])) if sample is not None else ((None, None),)
        for i, (X, s) in enumerate(blocks):
            key = (name, version, i == 1)
            d = self.drift.get(key)
            if d is None:
                d = self.drift[key] = [[], [], 0, 0]
            # Rows served: the float32 rows kept under their key, the rest under float64's (the
            # window adds them up; C++ counts served rows of both kinds together).
            d[3] += s.shape[0] if i == 1 else served - (sample[4].shape[0] if sample is not None else 0)
            if X is not None and s.shape[0] and d[2] < DRIFT_ROWS:
                d[0].append(X)
                d[1].append(s)
                d[2] += s.shape[0]
                self.fast_room -= s.shape[0]

    def _flag(self, name, version, requests, rows, anomalies, top, rate, kept=None, scorer=None) -> None:
        if self.evaluator is None:
            return
        if scorer is None:
            kept = None  # nothing could explain them
        w = self.window.get(name)
        if w is None:
            self.window[name] = [requests, rows, anomalies, top, rate, version, [], None]
            w = self.window[name]
        else:
            w[0] += requests
            w[1] += rows
            w[2] += anomalies
            w[3] = max(w[3], top)
            w[4] = max(w[4], rate)
        if kept and (w[7] is None or w[7] is scorer):  # the rows of one version, with the Scorer that explains them
            room = ALERT_ROWS - sum(s.shape[0] for _, s in w[6])
            for X, s in kept:
                if room > 0:
                    w[6].append((X[:room], s[:room]))
                    room -= min(room, s.shape[0])
            w[7] = scorer
        w[5] = version

    # -- hand-over ----------------------------------------------------------------------------
    def start(self, loop) -> None:
        self.loop = loop
        if self.evaluator is not None:
            self.dispatcher.start()
        if self.evaluator is not None or self.drift is not None:
            self._handle = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._tick)
        self.hand_over()
        self.hand_over_drift()

    def hand_over_drift(self):
        """Count the rows kept for drift since the last call (in the counting thread); returns
        the future of that count (done at once when drift is off), which a report awaits so
        that it includes what was served just before."""
        if self.drift is not None:
            self.fast_room = FAST_ROWS
        if not self.drift:
            f: Future = Future()
            f.set_result(None)
            return f
        held, self.drift = self.drift, {}
        return self._counter.submit(self._count_drift, held, time.time())

    def _count_drift(self, held: dict, now: float) -> None:
        served: dict = {}  # (name, version) -> rows served, kept or not
        for (name, version, _), (xs, ss, _kept, n) in held.items():
            served[(name, version)] = served.get((name, version), 0) + n
            if not xs:
                continue
            try:
                X = xs[0] if len(xs) == 1 else np.concatenate(xs)
                s = ss[0] if len(ss) == 1 else np.concatenate(ss)
                drift_live.observe(self.drift_home, name, version, X, s, now=now)
                served[(name, version)] -= s.shape[0]
            except Exception as e:  # noqa: BLE001 - drift never fails serving; the log says what was lost
                log.warning("rows of %r not counted for drift: %s", name, e)
        for (name, version), rest in served.items():
            if rest > 0:  # served but not kept: in rows_seen (the document's sample_rate)
                try:
                    drift_live.observe(self.drift_home, name, version, None, now=now, served=rest)
                except Exception as e:  # noqa: BLE001
                    log.warning("rows of %r not counted for drift: %s", name, e)

    def hand_over(self) -> None:
        """Give the detectors that had detections since the last call to the alert rules: those
        with anomalies, and those without (which may clear a firing alert: resolved messages)."""
        window, self.window = self.window, {}
        now = time.time()
        obs = [alerts.Observation(name, w[0], w[1], w[2], w[3], w[4], w[5], now,
                                  why=functools.partial(_why, w[7], w[6]) if w[6] and w[7] is not None else None)
               for name, w in window.items()]
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
        """Hand over what is counted, wait for the rules to queue it, stop delivering; the
        drift rows kept are counted and written to the home."""
        if self._handle is not None:
            self._handle.cancel()
        if self._counter is not None:
            self.hand_over_drift()
            self._counter.shutdown(wait=True)
            try:
                drift_live.flush(self.drift_home)
            except Exception as e:  # noqa: BLE001 - stopping; the log says what was lost
                log.warning("drift counts not written at stop: %s", e)
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


def _why(scorer, kept: list) -> list:
    """The alert's why of the rows kept (blocks of float64 or float32 rows with their scores):
    each row's top features by the detector's default explanation."""
    out: list = []
    for X, s in kept:
        out += why_flagged(scorer, X, s)
    return out[:ALERT_ROWS]


__all__ = ["Observer", "INTERVAL", "DRIFT_ROWS", "FAST_ROWS"]
