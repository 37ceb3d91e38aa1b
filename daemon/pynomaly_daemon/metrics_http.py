"""``--metrics-port``: the daemon's metrics over HTTP (``GET /metrics``), for a Prometheus
scraper that cannot speak to a Unix socket. A few lines of asyncio rather than a web
framework: one path, one method, the response closed after it. It listens on 127.0.0.1 unless
``--metrics-host`` says otherwise; the socket's ``metrics`` op gives the same text."""

from __future__ import annotations

import asyncio
import logging

from pynomaly.service import metrics

log = logging.getLogger("pynomaly_daemon")


async def render(d) -> bytes:
    """The daemon's metrics: its counters read on the event loop (where they change), the jobs
    table and the text rendered in a thread."""
    from .observe import daemon_metrics, finish_render

    own = daemon_metrics(d)
    return await d.run(finish_render, d, own)


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + (b"" if head else body)


async def start(d, host: str, port: int):
    """Listen for scrapes; returns the asyncio server (close it to stop)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                writer.write(_response("400 Bad Request", b"bad request\n"))
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
                writer.write(_response("405 Method Not Allowed", b"only GET /metrics\n"))
                return
            if parts[1].split("?", 1)[0] != "/metrics":
                writer.write(_response("404 Not Found", b"only GET /metrics\n"))
                return
            body = await render(d)
            writer.write(_response("200 OK", body, metrics.CONTENT_TYPE, head=parts[0] == "HEAD"))
        except Exception as e:  # noqa: BLE001 - one failed scrape, logged
            log.warning("metrics scrape failed: %s", e)
            writer.write(_response("500 Internal Server Error", b"metrics unavailable\n"))
        finally:
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()

    try:
        return await asyncio.start_server(handle, host, port, limit=16384)
    except OSError as e:
        raise SystemExit(f"pynomaly daemon: cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
