"""Connections served by the native connection loop (``pynomaly.serving.native.NetLoop``,
python/src/netloop.hpp): epoll threads in C++ own the sockets, answer the small raw-row
``detect`` frames of loaded isolation forests themselves and hand every other frame here.

:class:`NativeConnection` is such a connection as the Python path sees it (``Daemon.handle``,
admission, batching and replies use it like a :class:`~.connection.Connection`; its writes go
back out through the loop on the same socket). :class:`NetPump` moves events between the loop
and the daemon: handed-over frames, closes and log lines, the served models, the loop's hit
counts for the cache, and the counts the loop needs for backpressure and closing.
"""

from __future__ import annotations

import logging
import time

from pynomaly.service.metrics import DURATION_BUCKETS, REQUEST_SECONDS
from pynomaly.serving import native
from pynomaly.serving.observe import DRIFT_ROWS

from .connection import Replies
from .errors import classify
from .sharedmem import MAX_FDS, FdQueue

log = logging.getLogger("pynomaly_daemon")

_FRAME, _CLOSED, _LOG = 0, 1, 2
_HITS_INTERVAL = 0.05  # seconds between reports of the loop's hits to the cache (its LRU and refresh)


class _Writer:
    """The ``transport`` of a native connection: its bytes go out through the loop."""

    __slots__ = ("net", "id", "conn")

    def __init__(self, net, conn_id: int, conn):
        self.net, self.id, self.conn = net, conn_id, conn

    def write(self, data) -> None:
        if not self.conn.closed:
            self.net.send(self.id, data)


class NativeConnection(Replies):
    """A connection of the native loop with requests on the Python path.

    The loop pauses reading from it on its own counts (what the Python path still has to
    answer, replies not read), so the asyncio reading switches below do nothing.
    """

    read_paused = False
    eof = False
    passes_fds = True

    def __init__(self, pump: "NetPump", conn_id: int, peer: str, uid: int, gid: int):
        self.d = pump.d
        self.pump = pump
        self.id = conn_id
        self.set_peer(None, uid if uid >= 0 else None, gid if gid >= 0 else None)
        self.peer = peer
        self.closed = False
        self._in_flight = 0
        self.taken = 0  # frames taken from the loop since the last update
        self.last_rx = time.monotonic()  # when its frames were last taken: their requests' latency starts there
        self.transport = _Writer(pump.net, conn_id, self)
        self.fds = FdQueue()

    def take_fd(self):
        return self.fds.take()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @in_flight.setter
    def in_flight(self, n: int) -> None:
        self._in_flight = n
        self.pump.changed(self)

    def update_reading(self) -> None:
        pass

    def after_done(self) -> None:
        pass


class NetPump:
    """Runs the native loop for a daemon on its listening socket (see the module docstring)."""

    def __init__(self, daemon, sock):
        cfg = daemon.config
        self.d = daemon
        self.sock = sock
        uids = sorted(cfg.allowed_uids) if cfg.allowed_uids is not None else None
        # With roles, the loop answers detects itself only for peers whose role allows them;
        # every frame of any other peer goes to the Python path, which refuses what it must.
        fast_uids, fast_gids = cfg.access.detectors() if cfg.access is not None else (None, None)
        # Raw-row requests the fast path could answer but for their size are scored by the
        # loop thread up to --idle-inline-rows (the rows that skip the pool on the uvloop path):
        # 1k rows then cost no hop to Python and back. Larger ones go to the pool, split.
        self.net = native.NetLoop(sock.fileno(), cfg.net_threads, cfg.max_frame, daemon.fast_rows,
                                cfg.idle_inline_rows, cfg.max_connections, cfg.conn_max_in_flight, cfg.max_rx_bytes,
                                cfg.idle_timeout, cfg.frame_timeout, cfg.write_timeout, uids, fast_uids, fast_gids,
                                daemon.limits.per_uid, daemon.limits.reserve, sorted(daemon.limits.admin_uids),
                                sorted(daemon.limits.admin_gids), list(DURATION_BUCKETS),
                                DRIFT_ROWS if daemon.drift_on else 0)
        self.conns: dict = {}
        self._changed: dict = {}
        self._sync_handle = None
        self._hits_handle = None
        self.loop = None

    def start(self, loop) -> None:
        self.loop = loop
        loop.add_reader(self.net.notify_fd, self.on_events)
        self.net.start()
        self._hits_handle = loop.call_later(_HITS_INTERVAL, self._report_hits)

    def stop(self) -> int:
        """Close every connection still open and join the loop's threads; returns how many were open."""
        left = self.net.connections
        if self.loop is not None:
            self.loop.remove_reader(self.net.notify_fd)
            if self._hits_handle is not None:
                self._hits_handle.cancel()
        self.net.stop()
        for conn in self.conns.values():
            conn.closed = True
            conn.fds.close()
        self.conns.clear()
        return left

    # -- the served models: the cache's native lookups, mirrored into the loop -------------
    # A model taken out of the loop's table takes its counts along: they are handed over first
    # (the rows kept for drift and the anomalies' tally would be lost with it).
    def set_model(self, name: str, version, served) -> None:
        self.flush_hits()
        self.net.set_model(name, version, served)

    def clear_models(self) -> None:
        self.flush_hits()
        self.net.clear_models()

    # -- events from the loop -----------------------------------------------------------------
    def on_events(self) -> None:
        d = self.d
        handle = d.handle
        now = time.monotonic()
        for ev in self.net.take():
            kind, cid = ev[0], ev[1]
            if kind == _FRAME:
                conn = self.conns.get(cid)
                if conn is None:
                    conn = self.conns[cid] = NativeConnection(self, cid, ev[3], ev[4], ev[5])
                conn.taken += 1
                conn.last_rx = now
                self.changed(conn)
                if ev[6] and not conn.fds.add(ev[6]):
                    self._refuse(conn, f"too many file descriptors: at most {MAX_FDS} may wait for the "
                                       "frames that name them (one per shared-memory detect)")
                if conn.closed:
                    continue
                try:
                    handle(conn, memoryview(ev[2]))
                except Exception as err:  # noqa: BLE001 - the rest of the batch is still answered
                    code, msg = classify(err)
                    conn.reply_error(0, code, msg)
            elif kind == _CLOSED:
                conn = self.conns.pop(cid, None)
                if conn is not None:
                    conn.closed = True
                    conn.fds.close()
                    self._changed.pop(cid, None)
            else:
                level, code, message, peer = ev[2], ev[3], ev[4], ev[5]
                if code:
                    d.errors[code] += 1
                    log.log(level, "%s: %s: %s", peer, code, message)
                    if code == "forbidden":  # the allow-list, enforced by the loop
                        d.record_refusal(peer, ev[6] if ev[6] >= 0 else None, ev[7] if ev[7] >= 0 else None, message)
                else:
                    log.log(level, "%s: %s", peer, message)
        batcher = d.batcher
        if batcher.pending and batcher.flush_handle is None:
            batcher.flush()  # as Connection.buffer_updated: nothing else to wait for

    def _refuse(self, conn: NativeConnection, message: str) -> None:
        """A final error, then the loop closes the connection once it is written."""
        conn.reply_error(0, "bad_request", message)
        conn.closed = True  # later frames of this read are not served
        conn.fds.close()
        self.net.close(conn.id)

    def changed(self, conn: NativeConnection) -> None:
        """conn's counts changed: tell the loop after the current callback, so that the replies
        that callback writes reach the loop before the counts that let it close the connection."""
        self._changed[conn.id] = conn
        if self._sync_handle is None:
            self._sync_handle = self.loop.call_soon(self._sync)

    def _sync(self) -> None:
        self._sync_handle = None
        changed, self._changed = self._changed, {}
        update = self.net.update
        for conn in changed.values():
            if not conn.closed:
                update(conn.id, conn.taken, conn._in_flight)
            conn.taken = 0

    def _report_hits(self) -> None:
        self.flush_hits()
        self._hits_handle = self.loop.call_later(_HITS_INTERVAL, self._report_hits)

    def flush_hits(self) -> None:
        """Hand the loop's hits since the last call to the cache and the observer."""
        now = time.monotonic()
        used = self.d.cache.used
        obs = self.d.observer
        for name, version, n, rows, flagged, durations, seconds, sample, why in self.net.take_hits():
            used(name, version, n, now)
            if obs is not None:
                obs.add(name, version, n, rows, flagged, why, self._explainer(name, version, why))
                REQUEST_SECONDS.add(durations, seconds, op="detect", detector=name, face="daemon")
                if sample is not None:  # rows kept for drift (issue 24)
                    obs.add_sample(name, version, sample, sample[2])

    def _explainer(self, name: str, version: int, why):
        """The loaded Scorer that explains the anomalous rows the loop kept (issue 22's alerts)."""
        return None if why is None else self.d.cache.entries.get((name, version))

    def counters(self) -> dict:
        return self.net.counters()
