"""The detection daemon: one event loop, a Unix socket, frames of MessagePack (pynomaly.wire).

The rooms, each owning one concern:

- ``config.py``: every setting once (the command line is derived from it);
- ``roles.py``: who may do what (``--role``): checked per request in ``handle`` below; the
  native paths answer only peers whose role lets them detect;
- ``audit.py``: refused requests and administrative ops into the home's audit trail;
- ``server.py`` (here): the socket, signals, timeouts, drain, and the dispatch of each parsed
  request: ``detect`` to the paths below, every other op through ``handlers.HANDLERS``;
- ``netloop.py``: the native connection loop (C++ epoll threads in ``pynomaly._core``), which
  owns the clients' sockets when it runs (the default; ``--no-native-loop``), answers the fast
  requests itself and hands every other frame to ``handle`` below;
- ``connection.py``: one client of the uvloop path: reading frames into its buffer,
  backpressure, writing;
- ``admission.py``: the one admit/release of in-flight work and the "busy" rule;
- ``batching.py``: coalescing small requests, scoring large ones in the pool;
- ``learning.py``: streaming detectors, one request at a time in arrival order (``learn:
  true``), and checkpoints of what they learned;
- ``replies.py``: a batch's scores into DetectReply frames;
- ``pynomaly.serving`` (shared with the HTTP API): the data plane (lookup, score, decide,
  observe), the cache of loaded Scorers (LRU by bytes), latest versions and their refresh, and
  the sources Scorers come from (a repository home or a ``--models`` folder);
- ``errors.py``: the daemon's exceptions and their wire error codes;
- ``observe.py``: every path's detections counted per detector for the metrics and handed to
  the alert rules; ``metrics_http.py``: ``--metrics-port``.

Detection itself is the data plane's (``pynomaly.serving.dataplane``) and the Scorer's: the
daemon never turns scores into labels or probabilities on its own. The common request, a small
raw-rows ``detect`` for a native isolation forest, is answered by the native path
(``pynomaly.serving.native.fast_detect``) straight from the receive buffer, with the Scorer's typed ``ServedForest``; it stops at the first frame it
does not fully understand and leaves it to the Python path, so both give the same answers.
Every failure a client can cause ends in an Error reply or a clean close of that client only,
with one log line; SIGTERM drains, SIGHUP reloads.
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
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import msgspec

import pynomaly
from pynomaly import wire
from pynomaly.serving import native
from pynomaly.service.why import ALERT_ROWS
from pynomaly.service.metrics import REQUEST_SECONDS
from pynomaly.wire import Detect, Rows, default_socket_path, unsafe_socket_folder  # noqa: F401 - default_socket_path is re-exported

from .admission import Admission, ConnectionLimits
from .audit import Auditor
from .batching import Batcher, request_rows
from pynomaly.serving import DataPlane, ModelCache, RepositorySource, preload
from .config import Config
from .connection import Connection
from .errors import RequestError, classify
from .handlers import HANDLERS
from .learning import Learner, check_learn
from .netloop import NetPump
from .observe import Observer
from .replies import Pending
from .roles import admin_ids
from .sharedmem import map_rows, names_memfd

log = logging.getLogger("pynomaly_daemon")


class Daemon:
    """Serves one detector source on one Unix socket; see the module docstring."""

    log = log

    def __init__(self, source, config: Config):
        self.config = config
        self.access = config.access  # roles (roles.Roles), or None: everyone may do everything
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="pynomaly-score")
        self.counters = collections.Counter()
        self.errors = collections.Counter()
        self.requests = collections.Counter()
        self.n_detect = 0  # kept apart from `requests`: counted on the hot path
        self.cache = ModelCache(source, self.run, max_bytes=config.cache_bytes,
                                refresh_interval=config.refresh_interval, counters=self.counters)
        self.plane = DataPlane(self.cache)  # its observer is set at start, when metrics or alerts are on
        self.admission = Admission(config.max_in_flight, config.max_in_flight_rows, config.conn_max_in_flight)
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(wire.Request)
        self.batcher = Batcher(config, self.pool, self.admission, self.plane, self.counters, self.encoder,
                               lambda conn, req_id, code, msg: conn.reply_error(req_id, code, msg))
        self.conns: set = set()
        self.uid_conns = collections.Counter()  # open connections (of self.conns) per peer uid
        self.limits = ConnectionLimits(config.max_connections, config.max_connections_per_uid,
                                       config.admin_connections, admin_ids(config.access))
        self.batcher.conns = self.conns
        self.learner = Learner(self)
        self.loading: dict = {}  # name -> the last task of a detect waiting for that detector's load
        self.rx_reserved = 0
        self.draining = False
        self.started = time.monotonic()
        self.fast_out: list = []  # (connection, reply bytes) of the native path, sent once per iteration
        # Largest request and batch the native path serves (0: off). A coalescing window asks
        # for batches across connections, which only the Python path forms.
        self.fast_rows = (
            min(config.coalesce_rows, config.inline_rows) if config.fast_path and config.coalesce_window <= 0 else 0
        )
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.server = None
        # The native loop serves connections when the fast path may (it is the fast path's
        # home); otherwise, and with --no-native-loop, uvloop does.
        self.netloop: Optional[NetPump] = None
        self.lock_fd = None
        self._stop: Optional[asyncio.Event] = None
        # Metrics and alerts (issue 12): counted per detector when something reads them.
        self.observer: Optional[Observer] = None
        # Drift (issue 24): every path counts the rows it scores in the home's drift window.
        self.drift_on = bool(config.drift) and isinstance(source, RepositorySource)
        self.metrics_server = None
        self.job_workers: list = []
        self.auditor = Auditor(self, getattr(source, "home", None), audited=hasattr(source, "home"))

    def record_refusal(self, peer: str, uid, gid, message: str) -> None:
        """A ``forbidden`` reply (the allow-list or a role): into the audit trail."""
        self.auditor.refused(peer, uid, gid, message)

    @property
    def source(self):
        return self.cache.source

    def n_connections(self) -> int:
        return len(self.conns) + (self.netloop.net.connections if self.netloop is not None else 0)

    def native_counters(self) -> dict:
        """What the native loop counted (zeros without it): connections, connections_total,
        requests, rows, calls, coalesced."""
        if self.netloop is None:
            return collections.Counter()
        return self.netloop.counters()

    def run(self, fn, *args):
        """Run a blocking function in the daemon's thread pool; an awaitable of its result."""
        return self.loop.run_in_executor(self.pool, fn, *args)

    # -- socket ---------------------------------------------------------------------------
    def _bind(self) -> socket.socket:
        """Bind the socket file, replacing a stale one; refuse if a live daemon holds it.

        A lock file next to the socket (flock, released by the kernel when the holder dies)
        tells a live daemon from a dead one without racing on connect().
        """
        path = self.config.socket_path
        d = os.path.dirname(path) or "."
        if os.path.abspath(path) == os.path.abspath(default_socket_path()):
            os.makedirs(d, mode=0o700, exist_ok=True)  # the default runtime folder is ours to create
            why = unsafe_socket_folder(d)  # ... unless another user made it first
            if why:
                raise SystemExit(f"pynomaly daemon: {why}")
        elif not os.path.isdir(d):
            # A folder given explicitly is the user's: a typo must not create /nonexistent/dir as root.
            raise SystemExit(f"pynomaly daemon: the socket's folder {d} does not exist; create it first")
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
        self.batcher.loop = loop
        self._stop = asyncio.Event()
        _raise_fd_limit(self.config.max_connections + 256)
        preload()  # before the first request, and before gc.freeze below
        sock = self._bind()
        try:
            await self._start_extras(loop)
            self.cache.follow_source(loop)  # a database home tells of new versions (NOTIFY)
            if self.config.native_loop and self.fast_rows:
                self.netloop = NetPump(self, sock)
                self.cache.native_sink = self.netloop
                self.netloop.start(loop)
            else:
                self.server = await loop.create_unix_server(lambda: Connection(self), sock=sock,
                                                            backlog=socket.SOMAXCONN)
            loop.add_signal_handler(signal.SIGTERM, self._on_stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self._on_stop, "SIGINT")
            loop.add_signal_handler(signal.SIGHUP, self._on_reload)
            sweeper = loop.create_task(self._sweep())
            self.learner.lanes.start(loop)
            log.info(
                "serving on %s (pid %d, pynomaly %s, %d workers, %s)",
                self.config.socket_path, os.getpid(), pynomaly.__version__, self.config.workers,
                f"native loop of {self.config.net_threads} thread(s)" if self.netloop else "uvloop connections",
            )
            # Everything loaded so far lives as long as the daemon: keep it out of the cyclic
            # collector's full passes, which walk every tracked object while the loop waits.
            gc.collect()
            gc.freeze()
            print(f"READY {self.config.socket_path}", flush=True)
            await self._stop.wait()
            await self._drain()
            await self.learner.lanes.stop()  # what was learned and not yet saved
            sweeper.cancel()
        finally:
            if self.netloop is not None:
                self.netloop.stop()
                sock.close()  # uvloop's server owns it otherwise
            self._unbind()
            self.pool.shutdown(wait=True)
            self._stop_extras()
        log.info("stopped")

    async def _start_extras(self, loop) -> None:
        """Metrics, alerts and in-daemon job workers, as configured (issue 12)."""
        from pynomaly.serving import RepositorySource

        cfg = self.config
        home = self.source.home if isinstance(self.source, RepositorySource) else None
        repo = isinstance(self.source, RepositorySource)
        alerts_on = cfg.alerts and repo
        if cfg.metrics_port or alerts_on or self.drift_on:
            self.observer = Observer(home if alerts_on else None, alerts_on=alerts_on,
                                     drift_home=home if self.drift_on else None)
            self.plane.observer = self.observer
            self.observer.start(loop)
        if cfg.metrics_port:
            from . import metrics_http

            self.metrics_server = await metrics_http.start(self, cfg.metrics_host, cfg.metrics_port)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, cfg.metrics_port)
        if cfg.job_workers:
            if not repo:
                raise SystemExit("pynomaly daemon: --job-workers needs a repository home, not --models")
            from pynomaly.service import jobs

            self.job_workers = jobs.start_workers(home, cfg.job_workers)

    def _stop_extras(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
        for w in self.job_workers:
            w.shutdown()  # the running job is re-queued for the next worker
        if self.observer is not None:
            if self.netloop is not None:
                self.netloop.flush_hits()  # the last interval's detections count too
            self.observer.stop()

    def _on_stop(self, signame: str) -> None:
        if self.draining:
            return
        log.info("%s: draining %d connection(s), %d request(s) in flight", signame, self.n_connections(),
                 self.admission.requests)
        self.draining = True
        if self.netloop is not None:
            self.netloop.net.drain()  # no new connections; existing ones are answered
        else:
            self.server.close()
        try:
            os.unlink(self.config.socket_path)
        except FileNotFoundError:
            pass
        self._stop.set()

    def _on_reload(self) -> None:
        names = self.cache.invalidate(None)
        log.info("SIGHUP: reload; dropped %d cached detector version(s)", len(names))

    async def _drain(self) -> None:
        """Answer everything already received, then close each connection once it is quiet."""
        deadline = time.monotonic() + self.config.drain_timeout
        if self.netloop is not None:  # the loop closes each connection once it is quiet
            while self.netloop.net.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            left = self.netloop.stop()
            if left:
                log.warning("%d connection(s) closed by the drain deadline", left)
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
        while self.admission.requests and time.monotonic() < deadline + 1.0:
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

    # -- requests -------------------------------------------------------------------------
    def handle(self, conn: Connection, body) -> None:
        """One frame body from ``conn``: decoded once, then dispatched by its type."""
        try:
            req = self.decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            if conn.passes_fds and names_memfd(body):  # its descriptor is not the next frame's
                fd = conn.take_fd()
                if fd is not None:
                    os.close(fd)
            conn.reply_error(_guess_id(body), "bad_request", f"not a valid request: {e}")
            return
        if type(req) is Detect:
            rows = req.rows
            shared = type(rows) is Rows and rows.memfd is not None
            if conn.may_detect and (conn.may_learn or not req.learn):
                if shared and not self._map_shared(conn, req, rows):
                    return
                self.detect(conn, req)
            else:
                if shared:  # its descriptor is taken (and closed) all the same: later frames pair with theirs
                    fd = conn.take_fd()
                    if fd is not None:
                        os.close(fd)
                self.n_detect += 1  # stats count detect requests, refused ones too
                op = "learn" if conn.may_detect else "detect"
                conn.reply_error(req.id, "forbidden", self.access.refusal(conn.uid, conn.gid, op))
            return
        access = self.access
        if access is not None:
            op = type(req).__struct_config__.tag
            if not access.allows(conn.uid, conn.gid, op):
                self.requests[op] += 1
                conn.reply_error(req.id, "forbidden", access.refusal(conn.uid, conn.gid, op))
                return
        self.other(conn, req)

    def _map_shared(self, conn, req: Detect, rows: Rows) -> bool:
        """Take conn's next descriptor for a detect that names a memfd and map its rows in place
        of ``data``; False after an error reply. The descriptor is closed either way (the
        mapping keeps the memory)."""
        fd = conn.take_fd()
        if fd is None:
            why = ("no descriptor came with this frame (pass the memfd with SCM_RIGHTS in the same sendmsg)"
                   if conn.passes_fds else "shared memory needs the native connection loop (not --no-native-loop)")
            conn.reply_error(req.id, "bad_request", why)
            return False
        try:
            rows.data = map_rows(fd, rows, self.config.max_shm_bytes)
            rows.memfd = None
            return True
        except RequestError as err:
            conn.reply_error(req.id, err.code, err.message)
            return False
        finally:
            os.close(fd)

    def _admit(self, conn: Connection, req_id: int, rows: int) -> bool:
        why = self.admission.try_admit(conn, rows)
        if why is None:
            return True
        conn.reply_error(req_id, "busy", why)
        return False

    def detect(self, conn: Connection, req: Detect) -> None:
        self.n_detect += 1
        scorer = self.plane.lookup(req.detector, req.version)
        if scorer is None or req.detector in self.loading:
            # Behind the requests for this name that wait for its load, in arrival order (a
            # learning detector's results depend on it).
            if self._admit(conn, req.id, 0):
                name, before = req.detector, self.loading.get(req.detector)
                task = self.loop.create_task(self._detect_after_load(conn, req, before, conn.last_rx))
                self.loading[name] = task
                task.add_done_callback(lambda t: self.loading.pop(name) if self.loading.get(name) is t else None)
            return
        try:
            data, n, dtype = request_rows(scorer.version, req.rows)
            if req.learn:
                check_learn(scorer, req, self.cache)
        except RequestError as err:
            conn.reply_error(req.id, err.code, err.message)
            return
        why = self.admission.try_admit(conn, n)
        if why is None:
            if scorer.learns:  # what _submit does, written out: this is every request's path
                self.learner.submit(scorer, Pending(conn, req, data, n, conn.last_rx), dtype)
            else:
                self.batcher.submit(scorer, Pending(conn, req, data, n, conn.last_rx), dtype, in_read=True)
        else:
            conn.reply_error(req.id, "busy", why)

    async def _detect_after_load(self, conn: Connection, req: Detect, before, rx: float) -> None:
        try:
            scorer = await self.plane.scorer(req.detector, req.version)
            if before is not None:
                await asyncio.wait([before])
            data, n, dtype = request_rows(scorer.version, req.rows)
            check_learn(scorer, req, self.cache)
        except Exception as err:  # noqa: BLE001 - becomes the client's Error reply
            self.admission.release(conn, 0)
            code, msg = classify(err)
            conn.reply_error(req.id, code, msg)
            return
        if conn.closed:
            self.admission.release(conn, 0)
        else:
            self.admission.add_rows(n)  # admitted while its detector loaded: now its rows count too
            self._submit(scorer, Pending(conn, req, data, n, rx), dtype, in_read=False)

    def _submit(self, scorer, item: Pending, dtype: str, *, in_read: bool) -> None:
        """A streaming detector's requests go to its lane (learning.py), the others to the batcher."""
        if scorer.learns:
            self.learner.submit(scorer, item, dtype)
        else:
            self.batcher.submit(scorer, item, dtype, in_read=in_read)

    def other(self, conn: Connection, req) -> None:
        """Every op but detect: admitted like a request of no rows, answered by its handler."""
        self.requests[type(req).__struct_config__.tag] += 1
        if self._admit(conn, req.id, 0):
            self.loop.create_task(self._answer(conn, req))

    async def _answer(self, conn: Connection, req) -> None:
        handler = HANDLERS.get(type(req))
        t0 = time.perf_counter()
        try:
            if handler is None:  # pragma: no cover - every Request type has a handler
                raise RequestError("bad_request", f"unsupported op {type(req).__name__}")
            reply = await handler(self, req)
        except Exception as err:  # noqa: BLE001
            self.admission.release(conn, 0)
            code, msg = classify(err)
            conn.reply_error(req.id, code, msg)
            return
        self.admission.release(conn, 0)
        conn.send(reply)
        if type(req) is wire.Reload:  # the one administrative op so far
            self.auditor.record(conn, "reload", req.detector or "*", "ok",
                                {"invalidated": list(reply.invalidated)})
        if self.observer is not None:
            REQUEST_SECONDS.observe_labelled(time.perf_counter() - t0, (type(req).__struct_config__.tag, "", "daemon"))

    def serve_fast(self, conn: Connection, p: int, end: int) -> int:
        """Let the native path answer the small detects at conn's buffer[p:end]; returns where
        it stopped (a frame for the Python path, an incomplete one, or end)."""
        obs = self.observer
        if obs is None:
            p, replies, served, n_req, n_rows, n_calls, n_coalesced = native.fast_detect(
                conn.view, p, end, self.config.max_frame, self.fast_rows, self.cache.native
            )
        else:  # with the anomalies' tally (metrics, alerts) and, while wanted, rows for drift
            room = obs.fast_room
            out = native.fast_detect(conn.view, p, end, self.config.max_frame, self.fast_rows, self.cache.native, True,
                                     room, ALERT_ROWS if obs.evaluator is not None else 0)
            p, replies, served, n_req, n_rows, n_calls, n_coalesced, flagged = out[:8]
            if n_req:
                why = out[9] if len(out) > 9 else None  # a few anomalous rows, for the alert's why
                obs.add(served.name, served.version, n_req, n_rows, flagged, why,
                        None if why is None else self.cache.entries.get((served.name, served.version)))
                # each request's latency, from the read that carried it to its reply
                REQUEST_SECONDS.observe_labelled(time.monotonic() - conn.last_rx, ("detect", served.name, "daemon"),
                                                 n_req)
                if obs.drift is not None:
                    obs.add_sample(served.name, served.version, out[8] if room > 0 else None, n_rows)
        if n_req:
            self.n_detect += n_req
            c = self.counters
            c["fast_path_requests"] += n_req
            c["native_calls"] += n_calls
            c["rows_scored"] += n_rows
            if n_coalesced:
                c["coalesced_requests"] += n_coalesced
            self.cache.used(served.name, served.version, n_req, conn.last_rx)  # the time of this read
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


