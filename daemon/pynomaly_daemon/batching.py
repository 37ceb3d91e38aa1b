"""Batching: how admitted detect requests become native calls.

- Small requests are queued per (Scorer, dtype) and flushed once per event-loop iteration (or
  after ``coalesce_window`` seconds): one native call scores all of them. Batches up to
  ``inline_rows`` rows are scored on the loop thread, because the native core keeps the GIL
  for them anyway and a thread hop costs more than the scoring; larger ones go to the pool.
- Large requests are scored alone, from the receive buffer, in the thread pool (split into
  row chunks across the workers, which run in parallel because the core releases the GIL),
  except one of up to ``idle_inline_rows`` rows when nothing else is in flight, which nobody
  would overtake in the pool anyway.
- A request asking for attributions (``want: ["attributions"]``) is scored alone on a path
  that keeps its rows, since an explanation needs them and not only their scores: inline for
  one row of a native detector, else in the pool (the native paths answer an isolation
  forest's themselves and hand every other such frame here).
- A batch that fails (say one request holds a NaN) is rescored request by request, so one bad
  request does not fail its neighbours and the error names the right row.
"""

from __future__ import annotations

import asyncio
import functools
import time

import numpy as np

from pynomaly.domain import shown
from pynomaly.service.metrics import REQUEST_SECONDS
from pynomaly.wire import Rows

from .errors import RequestError, classify
from .replies import Pending, detect_replies

_DTYPES = {"f4": np.dtype("<f4"), "f8": np.dtype("<f8")}
# The canonical dtype objects: the binding recognises float32/float64 by identity.
_NATIVE = {"f4": np.dtype(np.float32), "f8": np.dtype(np.float64)}
ITEMSIZE = {"f4": 4, "f8": 8}


def request_rows(version, rows):
    """Validate a request's rows for a detector version: ``(bytes-like data, n_rows, "f4"|"f8")``.

    Raw rows stay a view of the receive buffer; nested lists become float64 once.
    """
    if type(rows) is Rows:
        dt = _DTYPES.get(rows.dtype)
        if dt is None:
            raise RequestError("bad_dtype", f"rows dtype must be 'f4' or 'f8', got {shown(rows.dtype)}")
        shape = rows.shape
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise RequestError("bad_shape", f"rows shape must be [n_rows >= 1, n_features >= 1], got {shape}")
        n, d = shape
        if rows.data is None:  # a memfd the connection could not supply (sharedmem.py maps the others)
            raise RequestError("bad_request", "rows needs 'data' (or 'memfd' with a descriptor passed with the frame)")
        if d != version.n_features:
            raise RequestError(
                "bad_shape", f"rows have {d} features, detector {version.name!r} v{version.version} expects {version.n_features}"
            )
        if len(rows.data) != n * d * dt.itemsize:
            raise RequestError(
                "bad_shape",
                f"rows data has {len(rows.data)} bytes; shape [{n}, {d}] of {rows.dtype} needs {n * d * dt.itemsize}",
            )
        return rows.data, n, rows.dtype
    if rows is None:
        raise RequestError("bad_request", "detect needs 'rows'")
    if not rows:
        raise RequestError("bad_shape", "rows is empty; at least one row is required")
    d = version.n_features
    for i, r in enumerate(rows):
        if len(r) != d:
            raise RequestError(
                "bad_shape", f"row {i} has {len(r)} values, detector {version.name!r} v{version.version} expects {d}"
            )
    return np.array(rows, dtype=np.float64).data, len(rows), "f8"


def matrix(data, n: int, n_features: int, dtype: str) -> np.ndarray:
    """An (n, n_features) array over ``data`` without copying it (unless it is misaligned)."""
    X = np.frombuffer(data, _NATIVE[dtype]).reshape(n, n_features)
    if not X.flags.aligned:
        X = X.copy()  # the core reads whole values: give it aligned ones
    return X


def _score_and_explain(scorer, X: np.ndarray, method):
    """``(scores, explanation)`` of rows X: what a request asking for attributions needs."""
    return scorer.score(X), scorer.explain(X, method)


class Batcher:
    """Queues, scores and answers admitted detect requests (see the module docstring)."""

    def __init__(self, config, pool, admission, plane, counters, encoder, reply_error):
        self.config = config
        self.pool = pool
        self.admission = admission
        self.plane = plane  # the data plane: the cache's bookkeeping, the decision, the observer
        self.counters = counters
        self.encoder = encoder
        self.reply_error = reply_error  # reply_error(conn, id, code, message)
        self.pending: dict = {}
        self.flush_handle = None
        self.loop = None
        self.conns = ()  # the daemon's connections (set by the daemon): with others, wait for them

    def submit(self, scorer, item: Pending, dtype: str, *, in_read: bool) -> None:
        """Score an admitted request: queued when small, alone when large.

        ``in_read``: submitted while a connection's read is being parsed; the read's end then
        flushes (Connection.buffer_updated), so a lone client's pipelined frames form one batch
        and nothing waits for another loop iteration (measured: a call_soon per request cost
        a fifth of the Python path's single-client rate).
        """
        req = item.req
        if req.explain_method is not None or (req.want is not None and "attributions" in req.want):
            self._explain(scorer, item, dtype)
            return
        cfg = self.config
        if item.n <= cfg.coalesce_rows:
            key = (scorer, dtype)
            group = self.pending.get(key)
            if group is None:
                self.pending[key] = [item]
                # With other clients connected (or a window), wait for them: the flush runs
                # after every ready connection was read.
                if self.flush_handle is None and (not in_read or len(self.conns) > 1 or cfg.coalesce_window > 0):
                    self._schedule_flush()
            else:
                group.append(item)
            return
        X = matrix(item.data, item.n, scorer.version.n_features, dtype)
        if X.flags.owndata:  # misaligned raw data (or nested lists) had to be copied
            self.counters["copied_rows"] += item.n
        if item.n <= cfg.idle_inline_rows and self.admission.requests == 1 and not self.pending:
            # Nothing else in flight: no one would run while this scores, and the hop to a
            # pool thread and back (tens of microseconds, more on a busy machine) is saved.
            self._score_now(scorer, X, [item], dtype)
            return
        self._score_in_pool(scorer, X, [item], dtype)

    def _explain(self, scorer, item: Pending, dtype: str) -> None:
        """Score and explain one request's rows together (see the module docstring)."""
        req = item.req
        if req.want is None or "attributions" not in req.want:
            self.admission.release(item.conn, item.n)
            self.reply_error(item.conn, req.id, "bad_request",
                             "explain_method applies to attributions; add 'attributions' to want")
            return
        # A copy: the rows outlive this read when explained in the pool, and it is small
        # next to the explanation's own work.
        X = np.array(matrix(item.data, item.n, scorer.version.n_features, dtype))
        work = functools.partial(_score_and_explain, scorer, X, req.explain_method)
        if item.n == 1 and scorer.rows_independent:  # one row of a native detector: microseconds
            try:
                done = work()
            except Exception as err:  # noqa: BLE001 - answered to the request
                self._failed(scorer, [item], err, dtype)
            else:
                self._deliver(scorer, [item], done[0], X, explanation=done[1])
            return
        fut = self.loop.run_in_executor(self.pool, work)
        fut.add_done_callback(lambda f: self._explained(scorer, item, X, f, dtype))

    def _explained(self, scorer, item: Pending, X, fut, dtype: str) -> None:
        err = fut.exception()
        if err is not None:
            self._failed(scorer, [item], err, dtype)
        else:
            scores, explanation = fut.result()
            self._deliver(scorer, [item], scores, X, explanation=explanation)

    def _schedule_flush(self) -> None:
        if self.config.coalesce_window > 0:
            self.flush_handle = self.loop.call_later(self.config.coalesce_window, self.flush)
        else:
            self.flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Score every queued small request: one native call per (detector version, dtype)."""
        self.flush_handle = None
        pending, self.pending = self.pending, {}
        now = time.monotonic()
        used = self.plane.cache.used
        for (scorer, dtype), items in pending.items():
            v = scorer.version
            used(v.name, v.version, len(items), now)
            if len(items) == 1:
                X = matrix(items[0].data, items[0].n, v.n_features, dtype)
            else:
                # One copy of a few hundred bytes per request buys one native call for all.
                X = matrix(b"".join([it.data for it in items]), sum([it.n for it in items]), v.n_features, dtype)
                self.counters["coalesced_requests"] += len(items)
            if X.shape[0] <= self.config.inline_rows:
                self._score_now(scorer, X, items, dtype)
            else:
                self._score_in_pool(scorer, X, items, dtype)

    def _score_now(self, scorer, X, items, dtype) -> None:
        try:
            scores = scorer.score(X)
        except Exception as err:  # noqa: BLE001 - answered per request
            self._failed(scorer, items, err, dtype)
        else:
            self._deliver(scorer, items, scores, X)

    def _score_in_pool(self, scorer, X: np.ndarray, items: list, dtype: str) -> None:
        """Score X in the thread pool, split into row chunks across the workers when it is large
        and the model itself runs on one thread. Rows are independent, so the scores equal
        one call's."""
        loop = self.loop
        n = X.shape[0]
        k = min(self.config.workers, n // self.config.split_rows)
        if k < 2 or getattr(scorer.model, "n_jobs", None) not in (None, 1):
            fut = loop.run_in_executor(self.pool, scorer.score, X)
            fut.add_done_callback(lambda f: self._scored(scorer, items, f, dtype, X))
            return
        bounds = np.linspace(0, n, k + 1).astype(int)
        futs = [loop.run_in_executor(self.pool, scorer.score, X[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        whole = asyncio.gather(*futs)

        def done(f):
            if f.exception() is not None:  # rescore in one call so the error names the right row
                fut = loop.run_in_executor(self.pool, scorer.score, X)
                fut.add_done_callback(lambda f1: self._scored(scorer, items, f1, dtype, X))
            else:
                self._scored(scorer, items, f, dtype, X)

        whole.add_done_callback(done)

    def _scored(self, scorer, items: list, fut, dtype: str, X=None) -> None:
        err = fut.exception()
        if err is not None:
            self._failed(scorer, items, err, dtype)
            return
        scores = fut.result()
        if type(scores) is list:  # chunks of a split request
            scores = np.concatenate(scores)
        self._deliver(scorer, items, scores, X)

    def _failed(self, scorer, items: list, err: BaseException, dtype: str) -> None:
        if len(items) > 1:  # (never a request asking for attributions: those are scored alone)
            # One bad request (say a NaN) must not fail its neighbours: score them one by one.
            for it in items:
                self._score_now(scorer, matrix(it.data, it.n, scorer.version.n_features, dtype), [it], dtype)
            return
        it = items[0]
        self.admission.release(it.conn, it.n)
        code, msg = classify(err)
        self.reply_error(it.conn, it.req.id, code, msg)

    def _deliver(self, scorer, items: list, scores: np.ndarray, X=None, explanation=None) -> None:
        c = self.counters
        c["native_calls"] += 1
        c["rows_scored"] += scores.shape[0]
        result = self.plane.decide(scorer, items, scores, X)  # X: the rows, for drift
        if explanation is not None:
            result = result.explained(explanation)
        detect_replies(scorer, items, result, self.encoder, self.admission.release, self.reply_error)
        if self.plane.observer is not None:  # metrics on: each request's latency, admitted to answered
            now = time.monotonic()
            observe = REQUEST_SECONDS.observe_labelled
            key = ("detect", scorer.version.name, "daemon")
            for it in items:
                observe(now - it.t0, key)
