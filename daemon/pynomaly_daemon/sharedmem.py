"""Rows passed in a sealed memfd instead of the frame (PROTOCOL.md, "Shared memory").

A client sends a ``detect`` whose ``rows`` map says ``"memfd": 0`` instead of carrying
``data``, and passes the memfd with the frame (``SCM_RIGHTS``). The native connection loop
keeps the descriptors a connection receives, in order, and hands them over with its frames;
each frame that names a memfd takes the oldest one (:meth:`FdQueue.take`).

The memfd is mapped read-only and scored in place, never copied. That is safe only because
the daemon insists on two seals the client can never remove: ``F_SEAL_SHRINK`` (the file cannot
shrink under the mapping, which would kill the daemon with SIGBUS on the next read) and
``F_SEAL_WRITE`` (the rows cannot change between the finiteness check and the scoring, nor while
they are scored). A descriptor that is not a memfd has no seals to show and is refused.
"""

from __future__ import annotations

import collections
import fcntl
import mmap
import os
import stat

import msgspec

from pynomaly import wire
from pynomaly.domain import shown

from .errors import RequestError

REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE
MAX_FDS = 8  # descriptors a connection may have waiting for their frames (the native loop's kMaxFds)
_ITEMSIZE = {"f4": 4, "f8": 8}


class FdQueue:
    """The descriptors a connection passed and no frame has taken yet, oldest first; owned
    (closed when dropped)."""

    __slots__ = ("fds",)

    def __init__(self):
        self.fds = collections.deque()

    def add(self, fds) -> bool:
        """Queue the descriptors that came before a frame; False (all closed) when more than
        MAX_FDS would wait: the client is refused."""
        self.fds.extend(fds)
        if len(self.fds) > MAX_FDS:
            self.close()
            return False
        return True

    def take(self):
        """The oldest descriptor (now the caller's to close), or None."""
        return self.fds.popleft() if self.fds else None

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popleft())


def names_memfd(body) -> bool:
    """Whether a frame body that failed validation names a memfd (it still takes its
    descriptor, so the next frame's pairing holds)."""
    try:
        obj = msgspec.msgpack.decode(body)
    except Exception:  # noqa: BLE001
        return False
    rows = obj.get("rows") if isinstance(obj, dict) else None
    return isinstance(rows, dict) and "memfd" in rows


def map_rows(fd: int, rows: wire.Rows, max_bytes: int) -> memoryview:
    """The rows of a sealed memfd as a read-only view of its mapping (kept alive by the view).

    Checks, in this order (the size only after the seals: before, it could still change):
    a ``dtype`` and ``shape`` that give a size, a regular file with ``F_GET_SEALS`` (a memfd; a
    pipe, socket or regular file on disk has none), the two seals, the size limit, and the
    memfd's real size (at least the rows' bytes; the rows start at offset 0).
    Raises RequestError; the caller closes ``fd``.
    """
    if rows.data is not None:
        raise RequestError("bad_request", "rows has both 'data' and 'memfd'; give one")
    item = _ITEMSIZE.get(rows.dtype)
    if item is None:
        raise RequestError("bad_dtype", f"rows dtype must be 'f4' or 'f8', got {shown(rows.dtype)}")
    shape = rows.shape
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise RequestError("bad_shape", f"rows shape must be [n_rows >= 1, n_features >= 1], got {shape}")
    nbytes = shape[0] * shape[1] * item
    if nbytes > max_bytes:
        raise RequestError("bad_shape", f"shared rows of {nbytes} bytes exceed the daemon's limit of {max_bytes}")
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise RequestError("bad_request", f"the passed descriptor cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RequestError("bad_request", "the passed descriptor is not a memfd (not even a regular file)")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise RequestError("bad_request", "the passed descriptor is not a memfd (it cannot be sealed)") from None
    if seals & REQUIRED_SEALS != REQUIRED_SEALS:
        raise RequestError("bad_request", "the memfd must be sealed with F_SEAL_SHRINK and F_SEAL_WRITE "
                                          "before it is passed (memfd_create(MFD_ALLOW_SEALING), then F_ADD_SEALS)")
    size = os.fstat(fd).st_size  # fixed from here on: it may not shrink, and growing is harmless
    if size < nbytes:
        raise RequestError("bad_shape", f"the memfd holds {size} bytes; shape {shape} of {rows.dtype} needs {nbytes}")
    try:
        # MAP_POPULATE: one call faults every page in, instead of one fault per page while scoring.
        mm = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)
    except (OSError, ValueError) as e:
        raise RequestError("bad_request", f"the memfd cannot be mapped for reading: {e}") from None
    return memoryview(mm)
