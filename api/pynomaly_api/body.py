"""Reading requests: bodies within the server's limit (also once decompressed), the chunks of
an ASGI body, the per-request deadline, and a model version in a path."""

from __future__ import annotations

import asyncio
import zlib
from typing import Optional

from starlette.requests import Request

from .errors import HTTPError

_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def content_length(headers, limit: int) -> Optional[int]:  # headers: any mapping with .get
    """The declared body length (None when not declared); 413 beyond ``limit``."""
    length = headers.get("content-length")
    if length is None:
        return None
    try:
        n = int(length)
    except ValueError:
        raise HTTPError(400, "Content-Length must be an integer") from None
    if n > limit:
        raise HTTPError(413, f"the body has {n} bytes; this server accepts at most {limit}")
    return n


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (413 beyond, also after decompression)."""
    content_length(request.headers, limit)
    return await read_stream(request.stream(), limit, request.headers.get("content-encoding"))


async def read_stream(stream, limit: int, encoding: Optional[str]) -> bytes:
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"the body is larger than this server accepts ({limit} bytes)")
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if encoding and encoding.lower() != "identity":
        wbits = _ENCODINGS.get(encoding.lower())
        if wbits is None:
            raise HTTPError(415, f"Content-Encoding {encoding[:20]!r} is not accepted (gzip, deflate)")
        d = zlib.decompressobj(wbits)
        try:
            body = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise HTTPError(400, f"the body is not valid {encoding}: {e}") from None
        if len(body) > limit or d.unconsumed_tail:
            raise HTTPError(413, f"the body is larger than this server accepts ({limit} bytes) once decompressed")
    return body


class deadline:
    """``with deadline(seconds):`` inside a coroutine: cancel it after ``seconds`` and raise
    TimeoutError there. What ``asyncio.timeout`` does, as a plain context manager with one
    timer (a tenth of its cost per request; this runs on every request), and on every Python.
    """

    __slots__ = ("seconds", "handle", "task", "fired")

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        self.task = asyncio.current_task()
        self.fired = False
        self.handle = asyncio.get_running_loop().call_later(self.seconds, self._fire)
        return self

    def _fire(self) -> None:
        self.fired = True
        self.task.cancel()

    def __exit__(self, exc_type, exc, tb):
        self.handle.cancel()
        if self.fired:
            uncancel = getattr(self.task, "uncancel", None)  # 3.11+: this cancel was ours
            if uncancel is not None:
                uncancel()
            if exc_type is asyncio.CancelledError:
                raise TimeoutError(f"the request took longer than {self.seconds:g} s") from None
        return False


def parse_version(text: Optional[str]) -> Optional[int]:
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 19 or int(text) < 1:
        raise HTTPError(400, f"model version must be a positive integer, got {text[:20]!r}")
    return int(text)


class ClientGone(Exception):
    """The client disconnected before its request was read."""


async def body_chunks(receive):
    """The chunks of a request body from an ASGI ``receive``."""
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            raise ClientGone("the client disconnected before sending its whole request")
        body = m.get("body", b"")
        if body:
            yield body
        if not m.get("more_body", False):
            return


__all__ = ["read_body", "read_stream", "content_length", "body_chunks", "ClientGone", "deadline", "parse_version"]
