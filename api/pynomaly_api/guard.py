"""Slow and numerous clients, refused at the connection (uvicorn's HTTP protocols, extended).

uvicorn has no timeout for reading a request's head: a client that sends half a header and
stalls (slowloris) holds its connection, and a file descriptor, for ever; 1,100 of them starve
every other client of a server under a 1,024-descriptor limit. Here, on either of uvicorn's
HTTP protocols (httptools, h11):

- a request's head (request line and headers) must be complete within ``header_timeout_s`` of
  the connection's opening or of the previous response: a partial head is answered 408 and
  closed, an idle keep-alive connection closed quietly; trickling a byte now and then does not
  reset the clock;
- a head larger than ``MAX_HEAD_BYTES`` is answered 431 and closed;
- one client address holds at most ``max_client_connections`` connections at once in this
  process: the next are answered 503 and closed at once (0: no cap). Behind a reverse proxy
  every connection comes from the proxy's address: raise the cap there or switch it off, and
  let the proxy cap its clients.

The settings are the server's (``PYNOMALY_API_SETTINGS``, like the app's), read once per process.
"""

from __future__ import annotations

import functools

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings

MAX_HEAD_BYTES = 64 * 1024  # what h11 allows by default is 16 KiB; browsers send a few KiB

_open: dict = {}  # client address -> connections open in this process


@functools.lru_cache(maxsize=1)
def _settings() -> Settings:
    return Settings.from_env()


def _reply(status: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\nConnection: close\r\nContent-Length: 0\r\n" + extra + b"\r\n"


_BUSY = _reply(b"503 Service Unavailable", b"Retry-After: 1\r\n")
_SLOW = _reply(b"408 Request Timeout")
_LARGE = _reply(b"431 Request Header Fields Too Large")


class _Guard:
    """The mixin: what both protocols get (see the module's docstring)."""

    _host = None
    _timer = None
    _head_bytes = 0
    _refused = False

    def connection_made(self, transport) -> None:
        s = _settings()
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None  # None: a Unix socket
        if host is not None and s.max_client_connections:
            if _open.get(host, 0) >= s.max_client_connections:
                self._refused = True
                transport.write(_BUSY)
                transport.close()
                return
            _open[host] = _open.get(host, 0) + 1
            self._host = host
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._head_bytes = 0
        self._timer = self.loop.call_later(_settings().header_timeout_s, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        if self._head_pending() and not self.transport.is_closing():
            if self._head_bytes:
                self.transport.write(_SLOW)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._head_pending():  # still reading a head: everything so far belongs to it
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self.transport.write(_LARGE)
                self.transport.close()
        else:
            self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # the next head has its own time
            if self._timer is not None:
                self._timer.cancel()
            self._arm()

    def connection_lost(self, exc) -> None:
        if self._refused:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._host is not None:
            left = _open.get(self._host, 1) - 1
            if left > 0:
                _open[self._host] = left
            else:
                _open.pop(self._host, None)
            self._host = None
        super().connection_lost(exc)


class HttpToolsGuard(_Guard, HttpToolsProtocol):
    def _head_pending(self) -> bool:
        # No request in progress (none yet, or the last one answered and its body read to the
        # end: the rest of a body answered early, e.g. 413, is not a head) and none parsed ahead.
        c = self.cycle
        return (c is None or (c.response_complete and not c.more_body)) and not self.pipeline


class H11Guard(_Guard, H11Protocol):
    def _head_pending(self) -> bool:
        import h11

        return self.conn.their_state is h11.IDLE


def protocol(http: str):
    """The guarded protocol class for uvicorn's ``http`` setting ``"httptools"`` or ``"h11"``."""
    return HttpToolsGuard if http == "httptools" else H11Guard


__all__ = ["protocol", "HttpToolsGuard", "H11Guard", "MAX_HEAD_BYTES"]
