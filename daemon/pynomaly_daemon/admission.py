"""Admission: how much work the daemon has taken on and not yet answered, and the one rule for
taking more. Every path that queues a request (coalesced, pooled, waiting for its detector to
load, or another op) admits it here and releases it here when answered.
"""

from __future__ import annotations

from typing import Optional


class Admission:
    """In-flight requests and rows, all connections, against the configured bounds."""

    __slots__ = ("requests", "rows", "max_requests", "max_rows", "conn_max")

    def __init__(self, max_requests: int, max_rows: int, conn_max: int):
        self.requests = 0
        self.rows = 0
        self.max_requests = max_requests
        self.max_rows = max_rows
        self.conn_max = conn_max

    def try_admit(self, conn, rows: int) -> Optional[str]:
        """Admit a request of ``conn`` with ``rows`` rows, or return why not (the "busy"
        message); its reading pauses at the per-connection bound.

        A lone request is always taken, however many rows: the row bound limits what waits
        together, not the largest request (the frame limit does that)."""
        if self.requests >= self.max_requests or (rows and self.requests and self.rows + rows > self.max_rows):
            return f"{self.requests} requests / {self.rows} rows in flight; retry later"
        conn.in_flight += 1
        self.requests += 1
        self.rows += rows
        if conn.in_flight >= self.conn_max:
            conn.update_reading()
        return None

    def add_rows(self, rows: int) -> None:
        """Rows of a request admitted before they were known (its detector was loading)."""
        self.rows += rows

    def release(self, conn, rows: int) -> None:
        """A request of ``conn`` was answered (or dropped)."""
        conn.in_flight -= 1
        self.requests -= 1
        self.rows -= rows
        if conn.read_paused or conn.eof:
            conn.after_done()
