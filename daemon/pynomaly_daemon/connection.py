"""One client connection: reading frames into the connection's own buffer, backpressure, and
writing replies. Parsed frame bodies go to the daemon (``Daemon.handle``); the native path
(``Daemon.serve_fast``) first answers what it can straight from the buffer.

The kernel reads straight into the buffer and raw rows become NumPy views of it; a buffer
holding decoded rows is never written again (a fresh one takes over when it fills), so views
stay valid while their rows are scored.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

import numpy as np

from pynomaly import wire
from pynomaly.wire import Error

log = logging.getLogger("pynomaly_daemon")

_BUF = 256 * 1024  # receive buffer; frames that do not fit get a buffer of their own
_MIN_FREE = 16 * 1024
_READ = 64 * 1024  # most bytes one read may put into the shared buffer
_LEN = wire.FRAME_LENGTH


class Replies:
    """Writing replies to a client, for every kind of connection (this module's, and the native
    loop's in netloop.py): needs ``d``, ``peer``, ``closed`` and ``transport.write``; and the
    peer's credentials ``uid`` and ``gid`` (None when unknown) with ``may_detect``, whether its
    role lets it detect (then the native path may answer it), and ``may_learn``."""

    uid = None
    gid = None
    may_detect = True
    may_learn = True

    def set_peer(self, pid, uid, gid) -> None:
        self.uid, self.gid = uid, gid
        self.peer = f"pid={pid} uid={uid}" if uid is not None else "client"
        access = self.d.access
        self.may_detect = access is None or access.allows(uid, gid, "detect")
        self.may_learn = access is None or access.allows(uid, gid, "learn")

    # Whether descriptors passed with SCM_RIGHTS reach the daemon (the native loop's
    # connections). uvloop reads with recv(), so the kernel closes them: no memfd here.
    passes_fds = False

    def take_fd(self):
        """The next descriptor the client passed (sharedmem.FdQueue), or None."""
        return None

    def send(self, msg) -> None:
        if self.closed:
            return
        self.transport.write(wire.frame(msg, self.d.encoder))

    def reply_error(self, req_id: int, code: str, message: str) -> None:
        self.d.errors[code] += 1
        log.warning("%s: %s: %s", self.peer, code, message)
        if code == "forbidden":
            self.d.record_refusal(self.peer, self.uid, self.gid, message)
        self.send(Error(req_id, code, message))


class Connection(Replies, asyncio.BufferedProtocol):
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
        d.counters["connections_total"] += 1
        sock = transport.get_extra_info("socket")
        uid = None
        try:
            pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            self.set_peer(pid, uid, gid)
        except (OSError, AttributeError):  # not Linux: no peer credentials
            self.set_peer(None, None, None)
        d.conns.add(self)
        d.uid_conns[self.uid] += 1
        allowed = d.config.allowed_uids
        if allowed is not None and uid not in allowed:
            self.fail("forbidden", f"uid {uid} is not allowed to use this daemon")
            return
        why = d.limits.refusal(self.uid, self.gid, len(d.conns), d.uid_conns[self.uid])
        if why:
            self.fail("too_many_connections", why)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.d.conns.discard(self)
        self.d.uid_conns[self.uid] -= 1
        if not self.d.uid_conns[self.uid]:
            del self.d.uid_conns[self.uid]
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
        serve_fast = self.d.serve_fast if self.d.fast_rows and self.may_detect else None
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
        batcher = self.d.batcher
        if batcher.pending and batcher.flush_handle is None:
            batcher.flush()  # see Batcher.submit: nothing else to wait for
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
        self.update_reading()

    def resume_writing(self) -> None:
        self.write_paused_since = None
        self.update_reading()

    # bookkeeping (the counts themselves are admission.Admission's)
    def after_done(self) -> None:
        """A request of this connection was answered: resume reading, or close after EOF."""
        if self.read_paused and self.in_flight <= self.d.config.conn_max_in_flight // 2:
            self.update_reading()
        if self.eof and self.in_flight == 0:
            self.d.loop.call_soon(self._close_if_done)  # after the caller has written its reply

    def _close_if_done(self) -> None:
        if self.eof and self.in_flight == 0 and not self.closed:
            self.transport.close()  # flushes pending replies first

    def update_reading(self) -> None:
        if self.closed:
            return
        want_pause = self.write_paused_since is not None or self.in_flight >= self.d.config.conn_max_in_flight
        if want_pause and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        elif not want_pause and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def fail(self, code: str, message: str) -> None:
        """Send a final error and close: the stream cannot be resynchronised."""
        self.reply_error(0, code, message)
        self.partial_since = None
        self.closed = True
        self.d.conns.discard(self)
        self.transport.close()
