"""Clients of the detection daemon: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both speak the frames of :mod:`pynomaly.wire` over the daemon's Unix socket, keep one
connection open across calls (reconnecting after a failure), apply a timeout to every call,
and take and return NumPy arrays::

    with pynomaly.Client() as c:
        r = c.detect("payments", X)        # r.scores, r.labels: NumPy arrays
        c.list(), c.info("payments"), c.health(), c.stats(), c.reload()

:class:`AsyncClient` has the same methods as coroutines and lets many requests share one
connection at once (replies are matched to requests by id).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
import threading
from typing import Optional, Sequence, Union

import msgspec
import numpy as np

from pynomaly import wire
from pynomaly._client_io import (  # noqa: F401 - the errors are this module's public names
    SHARED_MEMORY_MIN_ROWS,
    DaemonError,
    DaemonInputError,
    DaemonUnavailableError,
    DaemonUntrustedError,
    _fd_message,
    _frame_parts,
    _sealed_memfd,
    _sendall_parts,
    _shm_min_rows,
    _SNDBUF,
    _Trust,
)
from pynomaly.estimators._validation import as_matrix

__all__ = ["Client", "AsyncClient", "Detection", "DaemonError", "DaemonInputError", "DaemonUnavailableError",
           "DaemonUntrustedError"]

_LEN = wire.FRAME_LENGTH
_INPUT_CODES = {"bad_request", "bad_shape", "bad_dtype", "bad_value"}


class Detection(msgspec.Struct, frozen=True):
    """What ``detect`` returns: arrays of one value per row (None where not asked for).

    ``scores`` float64 (higher is more anomalous), ``labels`` int64 0/1 (as ``predict``),
    ``probabilities`` float64 in [0, 1] (``predict_proba(X)[:, 1]``, PyOD's 'linear'), ``anomalies`` int64 indices
    of rows labelled 1; ``threshold`` and the detector ``version`` that scored them.
    ``attributions`` float64 (n_rows, n_features), when asked for: the detector's
    ``explain(X, explain_method).values``, computed by ``explain_method`` as additive parts
    of ``explain_output`` (positive toward anomalous, except for output "path_length").
    """

    detector: str
    version: int
    threshold: float
    scores: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    probabilities: Optional[np.ndarray] = None
    anomalies: Optional[np.ndarray] = None
    attributions: Optional[np.ndarray] = None
    explain_method: Optional[str] = None
    explain_output: Optional[str] = None


def _matrix(X) -> np.ndarray:
    return np.ascontiguousarray(as_matrix(X))


def _dtype(X: np.ndarray) -> str:
    return "f4" if X.dtype == np.float32 else "f8"


def _rows(X) -> wire.Rows:
    X = _matrix(X)
    return wire.Rows(_dtype(X), list(X.shape), memoryview(X).cast("B"))


# shared_memory=True: batches from this many rows go through a memfd (bench/RESULTS.md,
# "Shared memory": below it the memfd's own setup costs more than the copies it saves).
def _want(want) -> list:
    want = [want] if isinstance(want, str) else list(want)
    bad = [w for w in want if w not in wire.WANT_NAMES]
    if bad or not want:
        raise ValueError(f"want must name some of {list(wire.WANT_NAMES)}, got {want!r}")
    return want


def _detection(r: wire.DetectReply) -> Detection:
    # astype copies: the arrays are the caller's, writable, independent of the reply buffer.
    return Detection(
        r.detector,
        r.version,
        r.threshold,
        None if r.scores is None else np.frombuffer(r.scores, "<f8").astype(np.float64),
        None if r.labels is None else np.frombuffer(r.labels, np.uint8).astype(np.int64),
        None if r.probabilities is None else np.frombuffer(r.probabilities, "<f8").astype(np.float64),
        None if r.anomalies is None else np.frombuffer(r.anomalies, "<i8").astype(np.int64),
        None if r.attributions is None else _attributions(r),
        r.explain_method,
        r.explain_output,
    )


def _attributions(r: wire.DetectReply) -> np.ndarray:
    values = np.frombuffer(r.attributions, "<f8")
    if r.n_rows < 1 or values.size % r.n_rows:
        raise DaemonError("internal", f"attributions of {values.size} values do not split into {r.n_rows} rows")
    return values.reshape(r.n_rows, -1).astype(np.float64)


def _check(reply, expected: type):
    if type(reply) is wire.Error:
        cls = DaemonInputError if reply.code in _INPUT_CODES else DaemonError
        raise cls(reply.code, reply.message)
    if type(reply) is not expected:
        raise DaemonError("internal", f"expected a {expected.__name__}, got {type(reply).__name__}")
    return reply


_frame = wire.frame


# Raw rows at least this large are sent from where they lie instead of being copied into the
# frame: at 100k x 21 float64 rows the copy took longer than a third of the scoring.
class _Operations:
    """The six operations, defined once: each builds its request and says which reply it
    expects and how to turn it into a result. :class:`Client` sends it and returns the result;
    :class:`AsyncClient` returns a coroutine of it (so its methods are awaited)."""

    _shm_rows = 0

    def _request(self, req, expected: type, result, shared=None):  # pragma: no cover - each client's
        raise NotImplementedError

    def detect(self, detector: str, X, *, version: Optional[int] = None,
               want: Sequence[str] = ("scores", "labels"), explain_method: Optional[str] = None,
               learn: bool = False) -> Detection:
        """Score the rows of X (2-D, numeric) with a served detector.

        ``learn``: a streaming detector scores each row, then learns it, in order (the peer
        needs the daemon's ``learn`` role).

        ``want`` picks the arrays returned: any of "scores", "labels", "probabilities",
        "anomalies", "attributions" (each row's per-feature attributions, by
        ``explain_method``; None: the detector's default, e.g. "tree_shap" for a forest,
        "path" its fast one). float32 and float64 arrays travel as raw bytes; other input is converted
        to float64 first, as in-process scoring does. Refused input raises DaemonInputError.
        With the client's ``shared_memory`` on, large batches go in a sealed memfd.
        """
        X = _matrix(X)
        want = _want(want)
        if self._shm_rows and X.shape[0] >= self._shm_rows:
            req = wire.Detect(next(self._ids), detector, version, want, explain_method, learn,
                              wire.Rows(_dtype(X), list(X.shape), memfd=0))
            return self._request(req, wire.DetectReply, _detection, X)
        req = wire.Detect(next(self._ids), detector, version, want, explain_method, learn, _rows(X))
        return self._request(req, wire.DetectReply, _detection)

    def list(self) -> list:
        """Every detector the daemon serves, as ``wire.DetectorInfo`` (latest versions)."""
        return self._request(wire.ListDetectors(next(self._ids)), wire.ListReply, lambda r: r.detectors)

    def info(self, detector: str, version: Optional[int] = None) -> wire.DetectorInfo:
        """Details of one detector version (the latest by default)."""
        return self._request(wire.Info(next(self._ids), detector, version), wire.InfoReply, lambda r: r.detector)

    def health(self) -> wire.HealthReply:
        """Liveness and version of the daemon."""
        return self._request(wire.Health(next(self._ids)), wire.HealthReply, None)

    def stats(self) -> wire.StatsReply:
        """The daemon's counters."""
        return self._request(wire.Stats(next(self._ids)), wire.StatsReply, None)

    def reload(self, detector: Optional[str] = None) -> list:
        """Drop cached versions (of one detector, or all) so the next request serves the latest."""
        return self._request(wire.Reload(next(self._ids), detector), wire.ReloadReply, lambda r: r.invalidated)

    def metrics(self) -> str:
        """The daemon's metrics in the Prometheus text format."""
        return self._request(wire.Metrics(next(self._ids)), wire.MetricsReply, lambda r: r.text)

    def drift(self, detector: str, *, version: Optional[int] = None, window: Optional[float] = None,
              method: Optional[str] = None, psi_threshold: Optional[float] = None,
              alpha: Optional[float] = None, min_rows: Optional[int] = None) -> dict:
        """The drift document of a detector's live window (``window`` seconds, default 3600)
        against its training reference, as ``pynomaly drift --json`` prints it (undecided below
        ``min_rows`` rows, default 300)."""
        req = wire.Drift(next(self._ids), detector, version, window, method, psi_threshold, alpha, min_rows)
        return self._request(req, wire.DriftReply, lambda r: r.document)


def _no_daemon(path: str, e: OSError) -> str:
    """Why a connection failed and what to do: most often no daemon has been started yet."""
    serve = "`pynomaly serve`" if path == wire.default_socket_path() else f"`pynomaly serve --socket {path}`"
    return (f"no pynomaly daemon at {path}: {e.strerror or e}; start one with {serve}, "
            "or pass Client() the socket path a running daemon listens on")


class Client(_Operations):
    """Blocking client of the daemon; thread-safe (one request at a time per client).

    Parameters
    ----------
    path : str, optional
        The daemon's socket (default: ``wire.default_socket_path()``).
    timeout : float, default 30
        Seconds a call may take, connecting included; on timeout the connection is dropped
        (its state is unknown) and the next call reconnects.
    shared_memory : bool or int, default False
        Send the rows of large ``detect`` batches in a sealed memfd passed over the socket
        instead of in the frame (PROTOCOL.md, "Shared memory"; Linux, and a daemon on its native
        connection loop). True: batches of at least ``SHARED_MEMORY_MIN_ROWS`` rows; an int:
        batches of at least that many rows.
    daemon_uid : int or str, optional
        The uid (or user name) the daemon must run as, checked with ``SO_PEERCRED`` before
        anything is sent (default: ``$PYNOMALY_DAEMON_UID``, else the client's own uid). Set it
        for a daemon run as a service user. Another raises :class:`DaemonUntrustedError`, as
        does a default socket folder another user could have made (PROTOCOL.md, "Transport").
    """

    def __init__(self, path: Optional[str] = None, *, timeout: float = 30.0,
                 shared_memory: Union[bool, int] = False, daemon_uid: Union[int, str, None] = None):
        self.path = path or wire.default_socket_path()
        self._trust = _Trust(self.path, daemon_uid)
        self.timeout = timeout
        self._shm_rows = _shm_min_rows(shared_memory)
        self._sock: Optional[socket.socket] = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._decoder = msgspec.msgpack.Decoder(wire.Reply)
        self._buf = bytearray(64 * 1024)  # received bytes: [_rx_start, _rx_end) not yet parsed
        self._rx_start = self._rx_end = 0

    # -- plumbing ----------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:  # room for a large request in one send (the kernel caps it at net.core.wmem_max)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
        except OSError:
            pass
        try:
            self._trust.before_connect(self.path)
            s.connect(self.path)
            self._trust.after_connect(s, self.path)
        except DaemonUntrustedError:
            s.close()
            raise
        except OSError as e:
            s.close()
            raise DaemonUnavailableError(_no_daemon(self.path, e)) from None
        # Once connected, the kernel applies the timeout (SO_RCVTIMEO/SO_SNDTIMEO) on a blocking
        # socket: each send and receive is then one system call, where Python's own timeout
        # polls before every one (a 1k-row detect went from 3 polls + 3 calls to 2 calls).
        tv = struct.pack("ll", int(self.timeout), int((self.timeout % 1) * 1e6))
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            s.settimeout(None)
        except OSError:  # keep Python's timeout
            pass
        self._rx_start = self._rx_end = 0
        return s

    def _recv_frame(self, s: socket.socket) -> memoryview:
        """The next frame body, usually read together with its length in one recv; bytes of a
        later frame stay for the next call."""
        buf, start, end = self._buf, self._rx_start, self._rx_end
        while True:
            have = end - start
            need = 4
            if have >= 4:
                need += _LEN.unpack_from(buf, start)[0]
                if have >= need:
                    self._rx_start, self._rx_end = (start + need, end) if start + need < end else (0, 0)
                    return memoryview(buf)[start + 4 : start + need]
            if start + need > len(buf):  # make room: a fresh buffer (views of the old may live on)
                fresh = bytearray(max(need, len(buf)))
                fresh[:have] = buf[start:end]
                self._buf = buf = fresh
                start, end = 0, have
            try:
                k = s.recv_into(memoryview(buf)[end:])
            except BlockingIOError:  # SO_RCVTIMEO ran out
                raise socket.timeout("timed out") from None
            if k == 0:
                raise DaemonUnavailableError("the daemon closed the connection")
            end += k

    def _call(self, req, expected: type, fd: Optional[int] = None):
        frame = _frame_parts(req)
        with self._lock:
            reused = self._sock is not None
            try:
                reply = self._exchange(frame, req.id, fd)
            except DaemonUnavailableError as e:
                # A kept connection the daemon has since closed (idle timeout, restart) fails
                # on first use: every operation is idempotent, so retry once on a fresh one.
                if not reused or "timed out" in str(e):
                    raise
                reply = self._exchange(frame, req.id, fd)
        return _check(reply, expected)

    def _exchange(self, frame, req_id: int, fd: Optional[int] = None):
        s = self._sock or self._connect()
        self._sock = s
        try:
            try:
                _sendall_parts(s, *frame, fd)
                sent = True
            except (BrokenPipeError, ConnectionResetError):
                # The daemon refused the connection (too_many_connections, forbidden) and closed
                # it before the request went out: its error frame is still there to read.
                sent = False
            while True:
                reply = self._decoder.decode(self._recv_frame(s))
                if reply.id == req_id and sent:
                    break
                if type(reply) is wire.Error and reply.id == 0:  # connection-level error
                    break
        except (OSError, msgspec.DecodeError) as e:
            self._drop()
            if isinstance(e, DaemonUnavailableError):
                raise
            # BlockingIOError: a send ran past SO_SNDTIMEO
            what = "timed out" if isinstance(e, (socket.timeout, BlockingIOError)) else f"failed: {e}"
            raise DaemonUnavailableError(f"call to the daemon at {self.path} {what}") from None
        if type(reply) is wire.Error and reply.id == 0:
            self._drop()
        return reply

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        with self._lock:
            self._drop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, req, expected: type, result, shared=None):
        # The memfd is made here and closed once the call is over (the daemon has its own
        # mapping by then, and closes its descriptor after mapping).
        fd = None if shared is None else _sealed_memfd(shared)
        if shared is not None and fd is None:
            req = msgspec.structs.replace(req, rows=_rows(shared))
        try:
            reply = self._call(req, expected, fd)
        finally:
            if fd is not None:
                os.close(fd)
        return reply if result is None else result(reply)


class AsyncClient(_Operations):
    """asyncio client with the methods of :class:`Client` as coroutines.

    Many calls may be in flight at once on its one connection; replies are matched by id.
    Create and use it inside one event loop. ``shared_memory`` and ``daemon_uid`` as for :class:`Client`.
    """

    def __init__(self, path: Optional[str] = None, *, timeout: float = 30.0,
                 shared_memory: Union[bool, int] = False, daemon_uid: Union[int, str, None] = None):
        self.path = path or wire.default_socket_path()
        self._trust = _Trust(self.path, daemon_uid)
        self.timeout = timeout
        self._shm_rows = _shm_min_rows(shared_memory)
        self._ids = itertools.count(1)
        self._writer: Optional[asyncio.StreamWriter] = None
        self._reader_task: Optional[asyncio.Task] = None
        self._waiting: dict = {}
        self._connecting: Optional[asyncio.Future] = None
        self._decoder = msgspec.msgpack.Decoder(wire.Reply)
        # Frames of the calls made in one event-loop iteration go out in one write: one
        # syscall for a gather() of many calls, and the daemon reads (and coalesces) them together.
        self._outbox: list = []
        self._outbox_writer = None

    async def _ensure(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> asyncio.StreamWriter:
        self._trust.before_connect(self.path)
        try:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=2**26)
        except OSError as e:
            raise DaemonUnavailableError(_no_daemon(self.path, e)) from None
        try:
            self._trust.after_connect(writer.get_extra_info("socket"), self.path)
        except DaemonUntrustedError:
            writer.close()
            raise
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read_loop(reader, writer))
        return writer

    async def _read_loop(self, reader: asyncio.StreamReader, writer) -> None:
        error: BaseException = DaemonUnavailableError("the daemon closed the connection")
        try:
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(_LEN.unpack(head)[0])
                reply = self._decoder.decode(body)
                fut = self._waiting.pop(reply.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(reply)
                elif type(reply) is wire.Error and reply.id == 0:
                    error = DaemonError(reply.code, reply.message)  # connection-level: fail everyone
                    break
        except (asyncio.IncompleteReadError, OSError, msgspec.DecodeError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            waiting, self._waiting = self._waiting, {}
            for fut in waiting.values():
                if not fut.done():
                    fut.set_exception(error)

    async def _call(self, req, expected: type, fd: Optional[int] = None):
        loop = asyncio.get_running_loop()
        writer = self._writer
        if writer is None or writer.is_closing():
            try:
                writer = await asyncio.wait_for(self._ensure(), self.timeout)
            except asyncio.TimeoutError:
                raise DaemonUnavailableError(f"connecting to the daemon at {self.path} timed out") from None
        fut = loop.create_future()
        self._waiting[req.id] = fut
        if writer is not self._outbox_writer:  # the first call this iteration, or a new connection
            self._send_outbox()
            self._outbox_writer = writer
            loop.call_soon(self._send_outbox)
        head, rows = _frame_parts(req)
        if fd is not None:
            try:
                await asyncio.wait_for(self._send_with_fd(writer, head, fd), self.timeout)
            except asyncio.TimeoutError:
                self._waiting.pop(req.id, None)
                raise DaemonUnavailableError(f"call to the daemon at {self.path} timed out") from None
            except OSError as e:
                self._waiting.pop(req.id, None)
                writer.close()
                raise DaemonUnavailableError(f"call to the daemon at {self.path} failed: {e}") from None
        else:
            self._outbox.append(head)
            if rows is not None:
                self._outbox.append(rows)
        try:
            reply = await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            self._waiting.pop(req.id, None)
            raise DaemonUnavailableError(f"call to the daemon at {self.path} timed out") from None
        return _check(reply, expected)

    async def _send_with_fd(self, writer, head, fd: int) -> None:
        """Send a (small) frame with a descriptor: straight on the socket, since asyncio's
        transports carry no ancillary data. The frame's bytes must not interleave with another
        frame's, so this waits until the transport has nothing queued and then sends without
        yielding; what sendmsg leaves over goes through the transport, still in order."""
        if self._outbox_writer is writer:
            self._send_outbox()
        transport = writer.transport
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM,
                             fileno=os.dup(writer.get_extra_info("socket").fileno()))
        try:  # the dup shares the transport's non-blocking mode: sendmsg never blocks the loop
            while True:
                if writer.is_closing():
                    raise ConnectionResetError("the connection closed")
                if transport.get_write_buffer_size() == 0:
                    try:
                        sent = sock.sendmsg([head], _fd_message(fd))
                    except BlockingIOError:
                        sent = -1
                    if sent >= 0:
                        if sent < len(head):
                            writer.write(memoryview(head)[sent:])
                        return
                await asyncio.sleep(0.0005)
        finally:
            sock.close()

    def _send_outbox(self) -> None:
        writer, frames = self._outbox_writer, self._outbox
        self._outbox_writer, self._outbox = None, []
        # A closing writer's calls were failed by its read loop.
        if frames and not writer.is_closing():
            # writelines sends the parts with one sendmsg where the loop supports it
            # (uvloop, Python 3.12+), else joins them.
            writer.writelines(frames)

    async def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        if self._reader_task is not None:
            await asyncio.gather(self._reader_task, return_exceptions=True)
            self._reader_task = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _request(self, req, expected: type, result, shared=None):
        fd = None if shared is None else _sealed_memfd(shared)
        if shared is not None and fd is None:
            req = msgspec.structs.replace(req, rows=_rows(shared))
        try:
            reply = await self._call(req, expected, fd)
        finally:
            if fd is not None:
                os.close(fd)
        return reply if result is None else result(reply)
