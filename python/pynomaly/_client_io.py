"""The socket client's plumbing (part of :mod:`pynomaly.client`): its errors, the check that the
socket's folder and the daemon at the other end are who they should be, sealed shared memory
for large batches, and scatter-gather framing. Loads no native code.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct
from typing import Optional, Union

import msgspec
import numpy as np

from pynomaly import wire
from pynomaly._errors import PynomalyError

_LEN = wire.FRAME_LENGTH
_frame = wire.frame


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


class DaemonUntrustedError(DaemonUnavailableError):
    """The socket may not be the daemon meant: its default folder could be another user's, or
    the process listening on it runs as another uid than the client expects (``daemon_uid``).
    Nothing was sent on it."""


def _daemon_uid(daemon_uid: Union[int, str, None]) -> int:
    """The uid the daemon must run as: ``daemon_uid``, else $PYNOMALY_DAEMON_UID, else the
    client's own (effective) uid. A uid or a user name."""
    v = daemon_uid if daemon_uid is not None else os.environ.get("PYNOMALY_DAEMON_UID") or None
    if v is None:
        return os.geteuid()
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    if isinstance(v, str):
        if v.isdigit():
            return int(v)
        import pwd

        try:
            return pwd.getpwnam(v).pw_uid
        except KeyError:
            pass
    raise ValueError(f"daemon_uid (or $PYNOMALY_DAEMON_UID) must be a uid >= 0 or a user name, got {v!r}")


class _Trust:
    """What a client checks before it sends anything: the default socket's folder (in /tmp
    anyone could have made it) and the uid of the process listening (SO_PEERCRED)."""

    def __init__(self, path: str, daemon_uid):
        self.uid = _daemon_uid(daemon_uid)
        # A path given explicitly is the caller's choice; the default one may lie in /tmp.
        self.folder = os.path.dirname(path) if path == wire.default_socket_path() else None

    def before_connect(self, path: str) -> None:
        why = self.folder and wire.unsafe_socket_folder(self.folder)
        if why:
            raise DaemonUntrustedError(f"not connecting to {path}: {why}")

    def after_connect(self, s: socket.socket, path: str) -> None:
        if not hasattr(socket, "SO_PEERCRED"):  # not Linux: the folder's mode is all there is
            return
        pid, uid, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != self.uid:
            raise DaemonUntrustedError(
                f"the process listening on {path} (pid {pid}) runs as uid {uid}, not as uid {self.uid}: nothing "
                f"sent; if a daemon of that uid is meant, pass daemon_uid={uid} or set PYNOMALY_DAEMON_UID={uid}")


SHARED_MEMORY_MIN_ROWS = 10_000
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def _shm_min_rows(shared_memory: Union[bool, int]) -> int:
    if shared_memory is True:
        return SHARED_MEMORY_MIN_ROWS
    if shared_memory is False or shared_memory is None:
        return 0
    if isinstance(shared_memory, int) and shared_memory >= 1:
        return shared_memory
    raise ValueError(f"shared_memory must be True, False or a number of rows >= 1, got {shared_memory!r}")


def _sealed_memfd(X: np.ndarray) -> Optional[int]:
    """A memfd holding X's bytes, sealed so that neither side can change or shrink it: the
    daemon maps it and scores the rows where they lie (PROTOCOL.md, "Shared memory").

    None when the kernel will not seal it now: F_SEAL_WRITE fails with EBUSY while freshly
    written pages still hold transient references (seen once in a benchmark run); the rows then
    go in the frame, as without the option.
    """
    fd = os.memfd_create("pynomaly-rows", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        data = memoryview(X).cast("B")
        os.ftruncate(fd, len(data))
        done = 0
        while done < len(data):  # write(), not a mapping: F_SEAL_WRITE needs no writable mapping
            done += os.pwrite(fd, data[done:], done)
        for attempt in range(3):
            try:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
                return fd
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise


def _fd_message(fd: int) -> list:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]


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
    if type(rows) is not wire.Rows or rows.data is None or len(rows.data) < _SCATTER_BYTES:
        return _frame(req), None
    data = rows.data
    head = _frame(msgspec.structs.replace(req, rows=msgspec.structs.replace(rows, data=memoryview(b""))))
    if head[-2:] != _EMPTY_BIN:  # wire's field order changed: this shortcut no longer holds
        raise AssertionError("raw rows must be the last field of a Detect frame")
    head[-2:] = b"\xc6" + _LEN.pack(len(data))
    _LEN.pack_into(head, 0, len(head) - 4 + len(data))
    return head, data


def _sendall_parts(s: socket.socket, head, rows, fd: Optional[int] = None) -> None:
    if fd is not None:  # the memfd goes with the frame's first bytes (and the frame is small)
        sent = s.sendmsg([head], _fd_message(fd))
        if sent < len(head):
            s.sendall(memoryview(head)[sent:])
        return
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
