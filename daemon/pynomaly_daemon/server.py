"""The detection daemon: one event loop, a Unix socket, frames of MessagePack (pynomaly.wire).

Shape of the work:
- Each connection is a BufferedProtocol: the kernel reads straight into the connection's
  buffer, frames are decoded in place and raw rows become NumPy views of that buffer
  (``np.frombuffer``); a buffer holding decoded rows is never written again, a fresh one
  takes over when it fills, so views stay valid while their rows are scored.
- Small ``detect`` requests are queued per (detector version, dtype) and flushed once per
  event-loop iteration (or after ``coalesce_window`` seconds): one native call scores all of
  them. Batches up to ``inline_rows`` rows are scored on the loop thread, because the native
  core keeps the GIL for them anyway and a thread hop costs more than the scoring; larger
  work goes to a thread pool, where the core releases the GIL and runs in parallel (split
  into row chunks across the workers), except a request of up to ``idle_inline_rows`` rows
  when nothing else is in flight, which nobody would overtake in the pool anyway.
- The common request, a small raw-rows ``detect`` for a loaded pynomaly IsolationForest, is
  served by native code (``pynomaly._core.fast_detect``, python/src/fastpath.cpp) straight
  from the receive buffer: parsed, scored in batches of up to ``coalesce_rows`` rows per
  connection read and answered without Python per request. It stops at the first frame it
  does not fully understand and leaves that one to the path above, so both give the same
  answers; a ``coalesce_window`` (coalescing across connections) turns it off.
- Detectors come from a source (sources.py), loaded off the loop and kept in an LRU cache
  bounded by bytes; the latest version of a name is re-checked in the background every
  ``refresh_interval`` seconds, so a newly saved version is served without a restart.
- Every failure a client can cause ends in an Error reply or a clean close of that client
  only, with one log line; SIGTERM drains, SIGHUP reloads.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import gc
import logging
import os
import signal
import socket
import stat
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import msgspec
import numpy as np

import pynomaly
from pynomaly import _core
from pynomaly import scores as _scores
from pynomaly.iforest import IsolationForest
from pynomaly import wire
from pynomaly.wire import Detect, DetectReply, Error, Rows, default_socket_path

from .sources import DetectorNotFound, DetectorUnavailable

log = logging.getLogger("pynomaly_daemon")

_BUF = 256 * 1024  # receive buffer; frames that do not fit get a buffer of their own
_MIN_FREE = 16 * 1024
_READ = 64 * 1024  # most bytes one read may put into the shared buffer
_LEN = struct.Struct(">I")
_DTYPES = {"f4": np.dtype("<f4"), "f8": np.dtype("<f8")}
# The canonical dtype objects: the binding recognises float32/float64 by identity.
_NATIVE = {"f4": np.dtype(np.float32), "f8": np.dtype(np.float64)}
_ITEMSIZE = {"f4": 4, "f8": 8}


@dataclass
class Config:
    """Everything the daemon can be told; the command line maps onto these fields."""

    socket_path: str
    socket_group: Optional[str] = None  # group allowed to connect too (socket mode 0660)
    allowed_uids: Optional[frozenset] = None  # None: anyone who can open the socket file
    max_frame: int = wire.MAX_FRAME_DEFAULT
    max_connections: int = 1024
    max_in_flight: int = 4096  # requests admitted and not yet answered, all connections
    max_in_flight_rows: int = 8_000_000
    max_rx_bytes: int = 1 << 30  # large frames being received, all connections together
    conn_max_in_flight: int = 256  # per connection: reading pauses above it
    idle_timeout: float = 300.0  # a connection with nothing to do for this long is closed
    frame_timeout: float = 10.0  # a started frame must be complete within this
    write_timeout: float = 30.0  # a client that reads none of its replies for this long is dropped
    drain_timeout: float = 10.0
    coalesce_window: float = 0.0  # 0: coalesce what arrives within one event-loop iteration
    coalesce_rows: int = 64  # requests with more rows are scored alone
    inline_rows: int = 64  # batches with more rows are scored in the thread pool
    split_rows: int = 512  # a pool batch of at least 2x this many rows is split across workers
    idle_inline_rows: int = 2048  # a request this small is scored on the loop when nothing else is in flight
    refresh_interval: float = 1.0
    fast_path: bool = True  # native serving of small raw-rows detects (off with a coalesce_window)
    cache_bytes: int = 1 << 30
    workers: int = field(default_factory=lambda: max(2, len(os.sched_getaffinity(0))))


class RequestError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# -- detectors -----------------------------------------------------------------------------
class Entry:
    """A loaded detector version, ready to score."""

    __slots__ = ("name", "version", "algorithm", "n_features", "threshold", "detector", "size", "train_stats", "fast")

    def __init__(self, record, detector):
        self.name = str(record.name)
        self.version = int(record.version)
        self.algorithm = str(getattr(record, "algorithm", type(detector).__name__))
        self.n_features = int(getattr(record, "n_features", None) or detector.n_features_in_)
        self.threshold = float(detector.threshold_)
        self.detector = detector
        try:
            self.size = len(detector.to_bytes())
        except Exception:  # noqa: BLE001 - a detector without to_bytes: size unknown
            self.size = 0
        # PyOD's 'linear' probabilities (predict_proba's default): the training scores'
        # summary once, then pynomaly.scores.linear per batch, bit-equal to predict_proba.
        train = getattr(detector, "decision_scores_", None)
        self.train_stats = _scores.describe(train) if train is not None and len(train) else None
        # What the native fast path needs: a core forest (any n_jobs: scores do not depend on it).
        forest = getattr(detector, "_forest", None) if type(detector) is IsolationForest else None
        self.fast = (
            (forest, self.n_features, self.threshold, self.name.encode(), self.version)
            if forest is not None and forest.n_features == self.n_features
            else None
        )

    def info(self, loaded: bool = True) -> wire.DetectorInfo:
        return wire.DetectorInfo(
            self.name, self.version, self.algorithm, self.n_features, self.threshold, loaded, self.size
        )

    def rows(self, rows):
        """Validate a request's rows; returns (bytes-like data, n_rows, dtype "f4" or "f8").

        Raw rows stay a view of the receive buffer; nested lists become float64 once.
        """
        if type(rows) is Rows:
            dt = _DTYPES.get(rows.dtype)
            if dt is None:
                raise RequestError("bad_dtype", f"rows dtype must be 'f4' or 'f8', got {rows.dtype!r}")
            shape = rows.shape
            if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
                raise RequestError("bad_shape", f"rows shape must be [n_rows >= 1, n_features >= 1], got {shape}")
            n, d = shape
            if d != self.n_features:
                raise RequestError(
                    "bad_shape", f"rows have {d} features, detector {self.name!r} v{self.version} expects {self.n_features}"
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
        d = self.n_features
        for i, r in enumerate(rows):
            if len(r) != d:
                raise RequestError(
                    "bad_shape", f"row {i} has {len(r)} values, detector {self.name!r} v{self.version} expects {d}"
                )
        return np.array(rows, dtype=np.float64).data, len(rows), "f8"

    def matrix(self, data, n: int, dtype: str) -> np.ndarray:
        """An (n, n_features) array over ``data`` without copying it (unless it is misaligned)."""
        X = np.frombuffer(data, _NATIVE[dtype]).reshape(n, self.n_features)
        if not X.flags.aligned:
            X = X.copy()  # the core reads whole values: give it aligned ones
        return X

    def score(self, X: np.ndarray) -> np.ndarray:
        return self.detector.decision_function(X)


class _Latest:
    __slots__ = ("version", "checked", "refreshing")

    def __init__(self, version: int, checked: float):
        self.version = version
        self.checked = checked
        self.refreshing = False


# -- the daemon ----------------------------------------------------------------------------
class Daemon:
    """Serves one detector source on one Unix socket; see the module docstring."""

    def __init__(self, source, config: Config):
        self.source = source
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="pynomaly-score")
        self.cache: "collections.OrderedDict[tuple, Entry]" = collections.OrderedDict()
        self.cache_size = 0
        self.latest: dict = {}
        # (name, requested version or None) -> Entry, for the per-request fast path; cleared
        # whenever the cache or a latest version changes, refilled by cached().
        self.hot: dict = {}
        self.loading: dict = {}
        self.conns: set = set()
        self.pending: dict = {}
        self.flush_handle = None
        self.in_flight = 0
        self.in_flight_rows = 0
        self.rx_reserved = 0
        self.draining = False
        self.started = time.monotonic()
        self.stats = collections.Counter()
        self.errors = collections.Counter()
        self.requests = collections.Counter()
        self.n_detect = 0  # kept apart from `requests`: counted on the hot path
        self.fast_out: list = []  # (connection, reply bytes) of the native path, sent once per iteration
        # Largest request and batch the native path serves (0: off). A coalescing window asks
        # for batches across connections, which only the Python path forms.
        self.fast_rows = (
            min(config.coalesce_rows, config.inline_rows) if config.fast_path and config.coalesce_window <= 0 else 0
        )
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(wire.Request)
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.server = None
        self.lock_fd = None
        self._stop: Optional[asyncio.Event] = None

    # -- socket ---------------------------------------------------------------------------
    def _bind(self) -> socket.socket:
        """Bind the socket file, replacing a stale one; refuse if a live daemon holds it.

        A lock file next to the socket (flock, released by the kernel when the holder dies)
        tells a live daemon from a dead one without racing on connect().
        """
        path = self.config.socket_path
        d = os.path.dirname(path) or "."
        os.makedirs(d, mode=0o700, exist_ok=True)
        lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise SystemExit(f"pynomaly daemon: another daemon is serving {path}") from None
        self.lock_fd = lock_fd
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise SystemExit(f"pynomaly daemon: {path} exists and is not a socket; not replacing it")
            log.info("replacing stale socket %s", path)
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mode = 0o660 if self.config.socket_group else 0o600
        old = os.umask(0o777 & ~mode)  # the file is born with its final mode: no window
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        if self.config.socket_group:
            import grp

            g = self.config.socket_group
            gid = int(g) if g.isdigit() else grp.getgrnam(g).gr_gid
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        return sock

    def _unbind(self) -> None:
        path = self.config.socket_path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the flock
            self.lock_fd = None

    # -- lifecycle ------------------------------------------------------------------------
    async def serve(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain in-flight requests and return."""
        self.loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        _raise_fd_limit(self.config.max_connections + 256)
        sock = self._bind()
        try:
            self.server = await loop.create_unix_server(lambda: Connection(self), sock=sock, backlog=socket.SOMAXCONN)
            loop.add_signal_handler(signal.SIGTERM, self._on_stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self._on_stop, "SIGINT")
            loop.add_signal_handler(signal.SIGHUP, self._on_reload)
            sweeper = loop.create_task(self._sweep())
            log.info(
                "serving on %s (pid %d, pynomaly %s, %d workers)",
                self.config.socket_path, os.getpid(), pynomaly.__version__, self.config.workers,
            )
            # Everything loaded so far lives as long as the daemon: keep it out of the cyclic
            # collector's full passes, which walk every tracked object while the loop waits.
            gc.collect()
            gc.freeze()
            print(f"READY {self.config.socket_path}", flush=True)
            await self._stop.wait()
            await self._drain()
            sweeper.cancel()
        finally:
            self._unbind()
            self.pool.shutdown(wait=True)
        log.info("stopped")

    def _on_stop(self, signame: str) -> None:
        if self.draining:
            return
        log.info("%s: draining %d connection(s), %d request(s) in flight", signame, len(self.conns), self.in_flight)
        self.draining = True
        self.server.close()  # no new connections; existing ones are answered
        try:
            os.unlink(self.config.socket_path)
        except FileNotFoundError:
            pass
        self._stop.set()

    def _on_reload(self) -> None:
        names = self.invalidate(None)
        log.info("SIGHUP: reload; dropped %d cached detector version(s)", len(names))

    async def _drain(self) -> None:
        """Answer everything already received, then close each connection once it is quiet."""
        deadline = time.monotonic() + self.config.drain_timeout
        while self.conns and time.monotonic() < deadline:
            now = time.monotonic()
            for c in list(self.conns):
                if c.in_flight == 0 and c.start == c.end and now - c.last_rx > 0.05:
                    c.transport.close()
            await asyncio.sleep(0.01)
        for c in list(self.conns):
            log.warning("%s: closed by the drain deadline with %d request(s) in flight", c.peer, c.in_flight)
            c.transport.abort()
        # Results still being computed for closed connections are dropped when they arrive.
        while self.in_flight and time.monotonic() < deadline + 1.0:
            await asyncio.sleep(0.01)

    async def _sweep(self) -> None:
        """Timeouts, checked a few times per shortest timeout rather than timers per request."""
        cfg = self.config
        tick = min(max(min(cfg.idle_timeout, cfg.frame_timeout, cfg.write_timeout) / 4, 0.02), 1.0)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for c in list(self.conns):
                if c.partial_since is not None and now - c.partial_since > cfg.frame_timeout:
                    c.fail("timeout", f"frame not completed within {cfg.frame_timeout:g} s")
                elif c.write_paused_since is not None and now - c.write_paused_since > cfg.write_timeout:
                    self.errors["timeout"] += 1
                    log.warning("%s: timeout: replies not read for %g s; dropping the client", c.peer, cfg.write_timeout)
                    c.transport.abort()
                elif c.in_flight == 0 and c.partial_since is None and now - c.last_rx > cfg.idle_timeout:
                    log.info("%s: idle for %g s; closing", c.peer, cfg.idle_timeout)
                    c.transport.close()

    # -- detectors ------------------------------------------------------------------------
    def cached(self, name: str, version: Optional[int]) -> Optional[Entry]:
        """The entry for (name, version) if it is loaded, else None."""
        v = version
        if v is None:
            lt = self.latest.get(name)
            if lt is None:
                return None
            v = lt.version
        e = self.cache.get((name, v))
        if e is not None:
            self.hot[(name, version)] = e
        return e

    def _check_fresh(self, e: Entry, now: float) -> None:
        """Start a background check for a newer version of e's name when it is due."""
        lt = self.latest.get(e.name)
        if lt is not None and not lt.refreshing and now - lt.checked > self.config.refresh_interval:
            lt.refreshing = True
            self.loop.create_task(self._refresh(e.name, lt))

    async def resolve(self, name: str, version: Optional[int]) -> Entry:
        e = self.cached(name, version)
        if e is not None:
            return e
        if version is None:
            v = await self._run(self.source.latest_version, name)
            lt = self.latest.get(name)
            if lt is None or lt.version != v:
                self.latest[name] = _Latest(v, time.monotonic())
                self.hot.clear()
            version = v
        e = self.cache.get((name, version))
        if e is not None:
            return e
        return await self._load(name, version)

    async def _load(self, name: str, version: int) -> Entry:
        key = (name, version)
        fut = self.loading.get(key)
        if fut is None:
            self.stats["cache_misses"] += 1
            fut = self.loop.run_in_executor(self.pool, self._load_sync, name, version)
            self.loading[key] = fut
            try:
                e = await fut
            finally:
                del self.loading[key]
            self._insert(e)
            return e
        return await asyncio.shield(fut)

    def _load_sync(self, name: str, version: int) -> Entry:
        record, detector = self.source.get(name, version)
        if not hasattr(detector, "threshold_"):
            raise DetectorUnavailable(f"detector {name!r} v{version} is not trained")
        return Entry(record, detector)

    def _insert(self, e: Entry) -> None:
        self.hot.clear()
        key = (e.name, e.version)
        old = self.cache.pop(key, None)
        if old is not None:
            self.cache_size -= old.size
        self.cache[key] = e
        self.cache_size += e.size
        while self.cache_size > self.config.cache_bytes and len(self.cache) > 1:
            _, ev = self.cache.popitem(last=False)
            self.cache_size -= ev.size
            log.info("cache: evicted %s v%d (%d bytes)", ev.name, ev.version, ev.size)

    async def _refresh(self, name: str, lt: _Latest) -> None:
        try:
            v = await self._run(self.source.latest_version, name)
            if v != lt.version:
                await self._load(name, v)  # load first, switch after: requests never wait
                log.info("detector %r: now serving version %d (was %d)", name, v, lt.version)
                lt.version = v
                self.hot.clear()
        except (DetectorNotFound, DetectorUnavailable) as e:
            # Deleted or archived: stop serving it; the next request gets the error.
            log.info("detector %r: no longer served: %s", name, e)
            self.invalidate(name)
        except Exception as e:  # noqa: BLE001 - a refresh failure keeps the current version
            log.warning("detector %r: refresh failed, keeping v%d: %s", name, lt.version, e)
        finally:
            lt.checked = time.monotonic()
            lt.refreshing = False

    def invalidate(self, name: Optional[str]) -> list:
        self.hot.clear()
        keys = [k for k in self.cache if name is None or k[0] == name]
        for k in keys:
            self.cache_size -= self.cache.pop(k).size
        if name is None:
            self.latest.clear()
        else:
            self.latest.pop(name, None)
        return sorted({f"{k[0]}@{k[1]}" for k in keys})

    def _run(self, fn, *args):
        return self.loop.run_in_executor(self.pool, fn, *args)

    # -- requests -------------------------------------------------------------------------
    def handle(self, conn: "Connection", body) -> None:
        try:
            req = self.decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            conn.reply_error(_guess_id(body), "bad_request", f"not a valid request: {e}")
            return
        if type(req) is not Detect:
            op = type(req).__struct_config__.tag
            self.requests[op] += 1
            if self.in_flight >= self.config.max_in_flight:
                conn.reply_error(req.id, "busy", f"{self.in_flight} requests in flight; retry later")
                return
            conn.admit(0)
            self.loop.create_task(self._other(conn, req))
            return
        self.n_detect += 1
        # The fast path, written out: a loaded detector and small raw rows, as most requests
        # are. Anything else takes detect(), which validates the same way with full messages.
        e = self.hot.get((req.detector, req.version))
        rows = req.rows
        if e is not None and type(rows) is Rows:
            shape = rows.shape
            size = _ITEMSIZE.get(rows.dtype)
            if size is not None and len(shape) == 2:
                n, d = shape
                cfg = self.config
                if (0 < n <= cfg.coalesce_rows and d == e.n_features and len(rows.data) == n * d * size
                        and self.in_flight < cfg.max_in_flight):
                    conn.in_flight += 1
                    self.in_flight += 1
                    self.in_flight_rows += n
                    if conn.in_flight >= cfg.conn_max_in_flight:
                        conn._set_reading()
                    key = (e, rows.dtype)
                    group = self.pending.get(key)
                    if group is None:
                        self.pending[key] = [(conn, req, rows.data, n)]
                        # A lone connection has no one to coalesce with beyond its own
                        # pipelined frames: Connection.buffer_updated flushes after parsing.
                        if self.flush_handle is None and (len(self.conns) > 1 or cfg.coalesce_window > 0):
                            self._schedule_flush()
                    else:
                        group.append((conn, req, rows.data, n))
                    return
        self.detect(conn, req)

    def _schedule_flush(self) -> None:
        if self.config.coalesce_window > 0:
            self.flush_handle = self.loop.call_later(self.config.coalesce_window, self.flush)
        else:
            self.flush_handle = self.loop.call_soon(self.flush)

    def detect(self, conn: "Connection", req: Detect) -> None:
        e = self.cached(req.detector, req.version)
        if e is None:
            if self.in_flight >= self.config.max_in_flight:
                conn.reply_error(req.id, "busy", f"{self.in_flight} requests in flight; retry later")
                return
            conn.admit(0)
            self.loop.create_task(self._detect_after_load(conn, req))
            return
        try:
            data, n, dtype = e.rows(req.rows)
        except RequestError as err:
            conn.reply_error(req.id, err.code, err.message)
            return
        self.submit(conn, req, e, data, n, dtype)

    async def _detect_after_load(self, conn: "Connection", req: Detect) -> None:
        try:
            e = await self.resolve(req.detector, req.version)
            data, n, dtype = e.rows(req.rows)
        except Exception as err:  # noqa: BLE001 - becomes the client's Error reply
            conn.done(0)
            code, msg = _classify(err)
            conn.reply_error(req.id, code, msg)
            return
        if conn.closed:
            conn.done(0)
        else:
            self.submit(conn, req, e, data, n, dtype, admitted=True)  # stays admitted until answered

    def submit(self, conn: "Connection", req: Detect, e: Entry, data, n: int, dtype: str, admitted: bool = False) -> None:
        cfg = self.config
        if admitted:  # admitted while its detector loaded: now its rows count too
            self.in_flight_rows += n
        elif self.in_flight >= cfg.max_in_flight or (
            self.in_flight and self.in_flight_rows + n > cfg.max_in_flight_rows
        ):
            conn.reply_error(
                req.id, "busy", f"{self.in_flight} requests / {self.in_flight_rows} rows in flight; retry later"
            )
            return
        else:
            conn.admit(n)
        item = (conn, req, data, n)
        if n > cfg.coalesce_rows:
            # Large: scored alone, in the pool, straight from the receive buffer.
            X = e.matrix(data, n, dtype)
            if X.flags.owndata:  # misaligned raw data (or nested lists) had to be copied
                self.stats["copied_rows"] += n
            if n <= cfg.idle_inline_rows and self.in_flight == 1 and not self.pending:
                # Nothing else in flight: no one would run while this scores, and the hop to a
                # pool thread and back (tens of microseconds, more on a busy machine) is saved.
                try:
                    scores = e.score(X)
                except Exception as err:  # noqa: BLE001
                    self._scored_error(e, [item], err, dtype)
                else:
                    self._deliver(e, [item], scores)
                return
            self._score_in_pool(e, X, [item], dtype)
            return
        key = (e, dtype)
        group = self.pending.get(key)
        if group is None:
            self.pending[key] = [item]
        else:
            group.append(item)
        if self.flush_handle is None:
            self._schedule_flush()

    def flush(self) -> None:
        """Score every queued small request: one native call per (detector version, dtype)."""
        self.flush_handle = None
        pending, self.pending = self.pending, {}
        now = time.monotonic()
        for (e, dtype), items in pending.items():
            self._used(e, len(items), now)
            if len(items) == 1:
                X = e.matrix(items[0][2], items[0][3], dtype)
            else:
                # One copy of a few hundred bytes per request buys one native call for all.
                X = e.matrix(b"".join([it[2] for it in items]), sum([it[3] for it in items]), dtype)
                self.stats["coalesced_requests"] += len(items)
            if X.shape[0] <= self.config.inline_rows:
                try:
                    scores = e.score(X)
                except Exception as err:  # noqa: BLE001
                    self._scored_error(e, items, err, dtype)
                    continue
                self._deliver(e, items, scores)
            else:
                self._score_in_pool(e, X, items, dtype)

    def _used(self, e: Entry, n_requests: int, now: float) -> None:
        """Bookkeeping for a batch of requests served from the cache: hits, LRU, freshness."""
        self._check_fresh(e, now)
        self.stats["cache_hits"] += n_requests
        if (e.name, e.version) in self.cache:
            self.cache.move_to_end((e.name, e.version))  # LRU: once per batch, not per request

    def serve_fast(self, conn: "Connection", p: int, end: int) -> int:
        """Let the native path answer the small detects at conn's buffer[p:end]; returns where
        it stopped (a frame for the Python path, an incomplete one, or end)."""
        p, replies, e, n_req, n_rows, n_calls, n_coalesced = _core.fast_detect(
            conn.view, p, end, self.config.max_frame, self.fast_rows, self.hot
        )
        if n_req:
            self.n_detect += n_req
            st = self.stats
            st["fast_path_requests"] += n_req
            st["native_calls"] += n_calls
            st["rows_scored"] += n_rows
            if n_coalesced:
                st["coalesced_requests"] += n_coalesced
            self._used(e, n_req, conn.last_rx)  # the time of this read
            if len(self.conns) == 1:
                conn.transport.write(replies)
            else:
                # Replies leave at the end of the loop iteration, after every ready connection
                # was read, as Redis does: each client then wakes once for all its replies and
                # the daemon is not preempted by a client it just woke (64 clients: 73k -> 88k
                # req/s in one A/B on the loaded VM).
                if not self.fast_out:
                    self.loop.call_soon(self._send_fast_replies)
                self.fast_out.append((conn, replies))
        return p

    def _send_fast_replies(self) -> None:
        out, self.fast_out = self.fast_out, []
        for conn, replies in out:
            if not conn.closed:
                conn.transport.write(replies)

    def _score_in_pool(self, e: Entry, X: np.ndarray, items: list, dtype: str) -> None:
        """Score X in the thread pool, split into row chunks across the workers when it is large
        and the detector itself runs on one thread (the core releases the GIL: chunks run in
        parallel). Rows are independent, so the scores equal one call's."""
        n = X.shape[0]
        k = min(self.config.workers, n // self.config.split_rows)
        if k < 2 or getattr(e.detector, "n_jobs", None) not in (None, 1):
            fut = self.loop.run_in_executor(self.pool, e.score, X)
            fut.add_done_callback(lambda f: self._scored(e, items, f, dtype))
            return
        bounds = np.linspace(0, n, k + 1).astype(int)
        futs = [self.loop.run_in_executor(self.pool, e.score, X[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        whole = asyncio.gather(*futs)

        def done(f):
            if f.exception() is not None:  # rescore in one call so the error names the right row
                fut = self.loop.run_in_executor(self.pool, e.score, X)
                fut.add_done_callback(lambda f1: self._scored(e, items, f1, dtype))
            else:
                self._scored(e, items, f, dtype)

        whole.add_done_callback(done)

    def _scored(self, e: Entry, items: list, fut, dtype: str) -> None:
        err = fut.exception()
        if err is not None:
            self._scored_error(e, items, err, dtype)
            return
        scores = fut.result()
        if type(scores) is list:  # chunks of a split request
            scores = np.concatenate(scores)
        self._deliver(e, items, scores)

    def _scored_error(self, e: Entry, items: list, err: BaseException, dtype: str) -> None:
        if len(items) > 1:
            # One bad request (say a NaN) must not fail its neighbours: score them one by one.
            for it in items:
                try:
                    s = e.score(e.matrix(it[2], it[3], dtype))
                except Exception as err1:  # noqa: BLE001
                    self._scored_error(e, [it], err1, dtype)
                else:
                    self._deliver(e, [it], s)
            return
        conn, req, _, n = items[0]
        conn.done(n)
        code, msg = _classify(err)
        conn.reply_error(req.id, code, msg)

    def _deliver(self, e: Entry, items: list, scores: np.ndarray) -> None:
        """Reply to each request of a batch; arrays are converted once per batch, then sliced."""
        self.stats["native_calls"] += 1
        total = scores.shape[0]
        self.stats["rows_scored"] += total
        self.in_flight -= len(items)
        self.in_flight_rows -= total
        thr = e.threshold
        single = len(items) == 1
        s_bytes = l_bytes = p_bytes = labels = None
        encode_into, pack_into = self.encoder.encode_into, _LEN.pack_into
        outs = {}
        off = 0
        for conn, req, _, n in items:
            a, off = off, off + n
            conn.in_flight -= 1
            if conn.read_paused or conn.eof:
                conn.after_done()
            if conn.closed:
                continue
            want = req.want
            if want is None:  # the default, ["scores", "labels"]: the common case, written out
                if l_bytes is None:
                    labels = scores > thr
                    l_bytes = labels.view(np.uint8).data if single else labels.tobytes()
                if s_bytes is None:
                    s_bytes = scores.data if single else scores.tobytes()
                if single:
                    reply = DetectReply(req.id, e.name, e.version, n, thr, s_bytes, l_bytes)
                else:
                    reply = DetectReply(req.id, e.name, e.version, n, thr, s_bytes[8 * a : 8 * off], l_bytes[a:off])
            else:
                reply = DetectReply(req.id, e.name, e.version, n, thr)
                for w in want:
                    if w == "scores":
                        if s_bytes is None:
                            s_bytes = scores.data if single else scores.tobytes()
                        reply.scores = s_bytes if single else s_bytes[8 * a : 8 * off]
                    elif w == "labels":
                        if l_bytes is None:
                            labels = scores > thr
                            l_bytes = labels.view(np.uint8).data if single else labels.tobytes()
                        reply.labels = l_bytes if single else l_bytes[a:off]
                    elif w == "anomalies":
                        if labels is None:
                            labels = scores > thr
                        reply.anomalies = (np.flatnonzero(labels[a:off])).astype("<i8").data
                    elif w == "probabilities":
                        if e.train_stats is None:
                            reply = None
                            conn.reply_error(
                                req.id, "unavailable",
                                f"detector {e.name!r} v{e.version} has no training scores to scale probabilities",
                            )
                            break
                        if p_bytes is None:
                            p = _scores.linear(scores, e.train_stats)
                            p_bytes = p.data if single else p.tobytes()
                        reply.probabilities = p_bytes if single else p_bytes[8 * a : 8 * off]
                if reply is None:
                    continue
            # Replies to one connection (pipelined requests) go out in one write.
            out = outs.get(conn)
            if out is None:
                out = outs[conn] = bytearray(4)
                at = 0
            else:
                at = len(out)
                out += b"\0\0\0\0"
            encode_into(reply, out, at + 4)
            pack_into(out, at, len(out) - at - 4)
        for conn, out in outs.items():
            if not conn.closed:
                conn.transport.write(out)

    async def _other(self, conn: "Connection", req) -> None:
        try:
            reply = await self._answer(req)
        except Exception as err:  # noqa: BLE001
            conn.done(0)
            code, msg = _classify(err)
            conn.reply_error(req.id, code, msg)
            return
        conn.done(0)
        conn.send(reply)

    async def _answer(self, req):
        if type(req) is wire.Health:
            return wire.HealthReply(
                req.id, "draining" if self.draining else "ok", pynomaly.__version__, wire.PROTOCOL_VERSION,
                os.getpid(), time.monotonic() - self.started,
            )
        if type(req) is wire.Stats:
            s = self.stats
            return wire.StatsReply(
                req.id, time.monotonic() - self.started, len(self.conns), s["connections_total"], self.in_flight,
                {**self.requests, "detect": self.n_detect}, dict(self.errors), s["rows_scored"], s["native_calls"], s["coalesced_requests"],
                len(self.cache), self.cache_size, s["cache_hits"], s["cache_misses"], s["copied_rows"], s["fast_path_requests"],
            )
        if type(req) is wire.Info:
            e = await self.resolve(req.detector, req.version)
            return wire.InfoReply(req.id, e.info())
        if type(req) is wire.ListDetectors:
            records = await self._run(self.source.list)
            out = []
            for r in records:
                e = self.cache.get((str(r.name), int(r.version)))
                out.append(
                    e.info()
                    if e is not None
                    else wire.DetectorInfo(str(r.name), int(r.version), str(r.algorithm), int(r.n_features or 0))
                )
                status = getattr(r, "status", None)
                if status is not None:
                    out[-1].status = str(getattr(status, "value", status))
            return wire.ListReply(req.id, out)
        if type(req) is wire.Reload:
            names = self.invalidate(req.detector)
            log.info("reload%s: dropped %d cached version(s)", f" {req.detector!r}" if req.detector else "", len(names))
            return wire.ReloadReply(req.id, names)
        raise RequestError("bad_request", f"unsupported op {type(req).__name__}")  # pragma: no cover


def _raise_fd_limit(want: int) -> None:
    """Let the process hold max_connections sockets plus its own files (soft limit up to hard)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            if new < want:
                log.warning("open-file limit %d is below --max-connections + 256; raise it (ulimit -n)", new)
    except (ImportError, ValueError, OSError) as e:
        log.warning("cannot raise the open-file limit: %s", e)


def _classify(err: BaseException):
    if isinstance(err, RequestError):
        return err.code, err.message
    if isinstance(err, DetectorNotFound):
        return "unknown_detector", str(err)
    if isinstance(err, DetectorUnavailable):
        return "unavailable", str(err)
    if isinstance(err, pynomaly.InvalidInputError):
        return "bad_value", str(err)
    log.exception("internal error", exc_info=err)
    return "internal", f"{type(err).__name__}: {err}"


def _guess_id(body) -> int:
    """The id of a request that failed validation, when the body is a map with an int id."""
    try:
        obj = msgspec.msgpack.decode(body)
    except Exception:  # noqa: BLE001
        return 0
    if isinstance(obj, dict):
        i = obj.get("id")
        if type(i) is int and 0 <= i < 2**64:
            return i
    return 0


# -- connections ---------------------------------------------------------------------------
class Connection(asyncio.BufferedProtocol):
    """One client. Reads frames into its own buffer and hands each body to the daemon."""

    def __init__(self, daemon: Daemon):
        self.d = daemon
        self.transport = None
        self.buf = bytearray(_BUF)
        self.view = memoryview(self.buf)
        self.start = 0  # first byte not yet parsed
        self.end = 0  # first free byte
        self.eof = False
        self.reserved = 0  # bytes of a dedicated buffer for one large frame, counted in rx_reserved
        self.frame_end = 0  # where the partial frame at `start` ends, once its length is known
        self.in_flight = 0
        self.closed = False
        self.read_paused = False
        self.write_paused_since = None
        self.partial_since = None
        self.last_rx = time.monotonic()
        self.peer = "client"

    # asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport
        d = self.d
        d.stats["connections_total"] += 1
        sock = transport.get_extra_info("socket")
        uid = None
        try:
            pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            self.peer = f"pid={pid} uid={uid}"
        except (OSError, AttributeError):  # not Linux: no peer credentials
            pass
        d.conns.add(self)
        allowed = d.config.allowed_uids
        if allowed is not None and uid not in allowed:
            self.fail("forbidden", f"uid {uid} is not allowed to use this daemon")
            return
        if len(d.conns) > d.config.max_connections:
            self.fail("too_many_connections", f"the daemon serves at most {d.config.max_connections} connections")

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.d.conns.discard(self)
        self.d.rx_reserved -= self.reserved
        self.reserved = 0
        if self.partial_since is not None and not self.d.draining:
            log.info("%s: connection closed in the middle of a frame (%d bytes)", self.peer, self.end - self.start)

    def get_buffer(self, sizehint: int):
        if self.reserved:  # a large frame's own buffer: let the kernel fill all of it
            return self.view[self.end :]
        # Reads into the shared buffer are capped, so a frame larger than the cap is always
        # seen before it is complete and moves to its own aligned buffer (in-place rows). Once
        # it is placed, the rest of it comes in one read.
        return self.view[self.end : max(self.end + _READ, self.frame_end)]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        self.last_rx = time.monotonic()
        buf, view, p, end = self.buf, self.view, self.start, self.end
        max_frame = self.d.config.max_frame
        handle = self.d.handle
        serve_fast = self.d.serve_fast if self.d.fast_rows else None
        while end - p >= 4:
            if serve_fast is not None:
                p = serve_fast(self, p, end)
                if end - p < 4:
                    break
            n = _LEN.unpack_from(buf, p)[0]
            if n > max_frame:
                self.start = p
                self.fail("frame_too_large", f"frame of {n} bytes exceeds the maximum of {max_frame}")
                return
            if end - p - 4 < n:
                break
            body = view[p + 4 : p + 4 + n]
            p += 4 + n
            handle(self, body)  # decoded raw rows may stay views of buf: buf is never rewound
            if self.closed:
                return
        d = self.d
        if d.pending and d.flush_handle is None:
            d.flush()  # see Daemon.handle: nothing else to wait for
        self.start = p
        self.frame_end = 0
        if p == end:
            self.partial_since = None
            if len(buf) - end < _MIN_FREE:
                self._new_buffer(0)
            return
        if self.partial_since is None:
            self.partial_since = self.last_rx
        if end - p < 4:
            if len(buf) - end < _MIN_FREE:
                self._new_buffer(0)
            return
        need = _LEN.unpack_from(buf, p)[0] + 4
        # A frame that does not fit gets its own buffer; so does a large one that would end
        # unaligned (raw rows at the end of a frame are then 8-byte aligned: read in place).
        if len(buf) - p < need or (need > _MIN_FREE and (p + need) % 8):
            d = self.d
            if need > _BUF and d.rx_reserved + need > d.config.max_rx_bytes:
                self.fail("overloaded", f"cannot buffer a {need}-byte frame now: {d.rx_reserved} bytes of "
                                        f"partial frames are held (limit {d.config.max_rx_bytes}); retry later")
                return
            self._new_buffer(need)
        self.frame_end = self.start + need

    def _new_buffer(self, need: int) -> None:
        """Move the unparsed tail into a fresh buffer with room for the whole frame.

        The frame is placed so that it ends on an 8-byte boundary: a client that puts the raw
        rows last (as PROTOCOL.md recommends) gets them aligned, so they are read in place.
        The old buffer lives on while decoded rows still point into it.
        """
        tail = self.view[self.start : self.end]
        size = max(_BUF, need + 8)
        d = self.d
        d.rx_reserved += (size if size > _BUF else 0) - self.reserved  # large partial frames, all connections
        self.reserved = size if size > _BUF else 0
        pad = (-need) % 8
        # Not zeroed (the kernel fills it before anything is parsed): a large frame's buffer
        # is then written once, not twice, and NumPy asks for huge pages where it can.
        buf = np.empty(size, np.uint8)
        buf[pad : pad + len(tail)] = tail
        self.buf, self.view = buf, memoryview(buf)
        self.start, self.end = pad, pad + len(tail)

    def eof_received(self):
        # The client shut down its writing side: answer what it sent, then close.
        self.eof = True
        if self.in_flight == 0:
            self.transport.close()
        return True

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests (backpressure).
        self.write_paused_since = time.monotonic()
        self._set_reading()

    def resume_writing(self) -> None:
        self.write_paused_since = None
        self._set_reading()

    # bookkeeping
    def admit(self, rows: int) -> None:
        self.in_flight += 1
        d = self.d
        d.in_flight += 1
        d.in_flight_rows += rows
        if self.in_flight >= d.config.conn_max_in_flight and not self.read_paused:
            self._set_reading()

    def done(self, rows: int) -> None:
        self.in_flight -= 1
        d = self.d
        d.in_flight -= 1
        d.in_flight_rows -= rows
        self.after_done()

    def after_done(self) -> None:
        """A request of this connection was answered: resume reading, or close after EOF."""
        if self.read_paused and self.in_flight <= self.d.config.conn_max_in_flight // 2:
            self._set_reading()
        if self.eof and self.in_flight == 0:
            self.d.loop.call_soon(self._close_if_done)  # after the caller has written its reply

    def _close_if_done(self) -> None:
        if self.eof and self.in_flight == 0 and not self.closed:
            self.transport.close()  # flushes pending replies first

    def _set_reading(self) -> None:
        if self.closed:
            return
        want_pause = self.write_paused_since is not None or self.in_flight >= self.d.config.conn_max_in_flight
        if want_pause and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        elif not want_pause and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def send(self, msg) -> None:
        if self.closed:
            return
        out = bytearray(4)
        self.d.encoder.encode_into(msg, out, 4)
        _LEN.pack_into(out, 0, len(out) - 4)
        self.transport.write(out)

    def reply_error(self, req_id: int, code: str, message: str) -> None:
        self.d.errors[code] += 1
        log.warning("%s: %s: %s", self.peer, code, message)
        self.send(Error(req_id, code, message))

    def fail(self, code: str, message: str) -> None:
        """Send a final error and close: the stream cannot be resynchronised."""
        self.reply_error(0, code, message)
        self.partial_since = None
        self.closed = True
        self.d.conns.discard(self)
        self.transport.close()
