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
import socket
import threading
from typing import Optional, Sequence

import msgspec
import numpy as np

from . import wire
from ._errors import PynomalyError
from ._validation import as_matrix

__all__ = ["Client", "AsyncClient", "Detection", "DaemonError", "DaemonInputError", "DaemonUnavailableError"]

_LEN = wire.FRAME_LENGTH
_INPUT_CODES = {"bad_request", "bad_shape", "bad_dtype", "bad_value"}


class DaemonError(PynomalyError):
    """The daemon answered a request with an error; ``code`` is one of ``wire.ERROR_CODES``."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DaemonInputError(DaemonError, ValueError):
    """The daemon refused the request's data or arguments (bad_request/bad_shape/bad_dtype/bad_value)."""


class DaemonUnavailableError(PynomalyError, ConnectionError):
    """No daemon answers on the socket, the connection broke, or a call timed out."""


class Detection(msgspec.Struct, frozen=True):
    """What ``detect`` returns: arrays of one value per row (None where not asked for).

    ``scores`` float64 (higher is more anomalous), ``labels`` int64 0/1 (as ``predict``),
    ``probabilities`` float64 in [0, 1] (``predict_proba(X)[:, 1]``, PyOD's 'linear'), ``anomalies`` int64 indices
    of rows labelled 1; ``threshold`` and the detector ``version`` that scored them.
    """

    detector: str
    version: int
    threshold: float
    scores: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    probabilities: Optional[np.ndarray] = None
    anomalies: Optional[np.ndarray] = None


def _rows(X) -> wire.Rows:
    X = np.ascontiguousarray(as_matrix(X))
    return wire.Rows("f4" if X.dtype == np.float32 else "f8", list(X.shape), memoryview(X).cast("B"))


def _want(want) -> list:
    want = [want] if isinstance(want, str) else list(want)
    bad = [w for w in want if w not in wire.WANT_ALL]
    if bad or not want:
        raise ValueError(f"want must name some of {list(wire.WANT_ALL)}, got {want!r}")
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
    )


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
_SCATTER_BYTES = 64 * 1024
_SNDBUF = 4 << 20
_EMPTY_BIN = b"\xc4\x00"  # MessagePack bin 8 of length 0


def _frame_parts(req):
    """The frame of ``req`` as (head, rows): ``head + rows`` are the bytes of ``_frame(req)``.

    ``rows`` is the raw data of a large Detect (None otherwise). The data is the frame's last
    field (wire.Detect puts rows last and wire.Rows its data last), so the head is the frame
    of the same request with empty data, its empty bin header widened to a bin 32 header.
    """
    rows = getattr(req, "rows", None)
    if type(rows) is not wire.Rows or len(rows.data) < _SCATTER_BYTES:
        return _frame(req), None
    data = rows.data
    head = _frame(msgspec.structs.replace(req, rows=msgspec.structs.replace(rows, data=memoryview(b""))))
    if head[-2:] != _EMPTY_BIN:  # wire's field order changed: this shortcut no longer holds
        raise AssertionError("raw rows must be the last field of a Detect frame")
    head[-2:] = b"\xc6" + _LEN.pack(len(data))
    _LEN.pack_into(head, 0, len(head) - 4 + len(data))
    return head, data


def _sendall_parts(s: socket.socket, head, rows) -> None:
    if rows is None:
        s.sendall(head)
        return
    parts = [memoryview(head), rows]
    while parts:  # sendmsg may take part of the frame; send the rest from where it stopped
        sent = s.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts:
            parts[0] = parts[0][sent:]


class _Operations:
    """The six operations, defined once: each builds its request and says which reply it
    expects and how to turn it into a result. :class:`Client` sends it and returns the result;
    :class:`AsyncClient` returns a coroutine of it (so its methods are awaited)."""

    def _request(self, req, expected: type, result):  # pragma: no cover - each client defines it
        raise NotImplementedError

    def detect(self, detector: str, X, *, version: Optional[int] = None,
               want: Sequence[str] = ("scores", "labels")) -> Detection:
        """Score the rows of X (2-D, numeric) with a served detector.

        ``want`` picks the arrays returned: any of "scores", "labels", "probabilities",
        "anomalies". float32 and float64 arrays travel as raw bytes; other input is converted
        to float64 first, as in-process scoring does. Refused input raises DaemonInputError.
        """
        req = wire.Detect(next(self._ids), detector, version, _want(want), _rows(X))
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


class Client(_Operations):
    """Blocking client of the daemon; thread-safe (one request at a time per client).

    Parameters
    ----------
    path : str, optional
        The daemon's socket (default: ``wire.default_socket_path()``).
    timeout : float, default 30
        Seconds a call may take, connecting included; on timeout the connection is dropped
        (its state is unknown) and the next call reconnects.
    """

    def __init__(self, path: Optional[str] = None, *, timeout: float = 30.0):
        self.path = path or wire.default_socket_path()
        self.timeout = timeout
        self._sock: Optional[socket.socket] = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._decoder = msgspec.msgpack.Decoder(wire.Reply)
        self._buf = bytearray(64 * 1024)

    # -- plumbing ----------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:  # room for a large request in one send (the kernel caps it at net.core.wmem_max)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
        except OSError:
            pass
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise DaemonUnavailableError(f"no pynomaly daemon at {self.path}: {e}") from None
        return s

    def _recv_exact(self, s: socket.socket, n: int) -> memoryview:
        if len(self._buf) < n:
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        got = 0
        while got < n:
            k = s.recv_into(view[got:], n - got)
            if k == 0:
                raise DaemonUnavailableError("the daemon closed the connection")
            got += k
        return view

    def _call(self, req, expected: type):
        frame = _frame_parts(req)
        with self._lock:
            reused = self._sock is not None
            try:
                reply = self._exchange(frame, req.id)
            except DaemonUnavailableError as e:
                # A kept connection the daemon has since closed (idle timeout, restart) fails
                # on first use: every operation is idempotent, so retry once on a fresh one.
                if not reused or "timed out" in str(e):
                    raise
                reply = self._exchange(frame, req.id)
        return _check(reply, expected)

    def _exchange(self, frame, req_id: int):
        s = self._sock or self._connect()
        self._sock = s
        try:
            _sendall_parts(s, *frame)
            while True:
                n = _LEN.unpack(self._recv_exact(s, 4))[0]
                reply = self._decoder.decode(self._recv_exact(s, n))
                if reply.id == req_id:
                    break
                if type(reply) is wire.Error and reply.id == 0:  # connection-level error
                    break
        except (OSError, msgspec.DecodeError) as e:
            self._drop()
            if isinstance(e, DaemonUnavailableError):
                raise
            what = "timed out" if isinstance(e, socket.timeout) else f"failed: {e}"
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

    def _request(self, req, expected: type, result):
        reply = self._call(req, expected)
        return reply if result is None else result(reply)


class AsyncClient(_Operations):
    """asyncio client with the methods of :class:`Client` as coroutines.

    Many calls may be in flight at once on its one connection; replies are matched by id.
    Create and use it inside one event loop.
    """

    def __init__(self, path: Optional[str] = None, *, timeout: float = 30.0):
        self.path = path or wire.default_socket_path()
        self.timeout = timeout
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
        try:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=2**26)
        except OSError as e:
            raise DaemonUnavailableError(f"no pynomaly daemon at {self.path}: {e}") from None
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

    async def _call(self, req, expected: type):
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
        self._outbox.append(head)
        if rows is not None:
            self._outbox.append(rows)
        try:
            reply = await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            self._waiting.pop(req.id, None)
            raise DaemonUnavailableError(f"call to the daemon at {self.path} timed out") from None
        return _check(reply, expected)

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

    async def _request(self, req, expected: type, result):
        reply = await self._call(req, expected)
        return reply if result is None else result(reply)
