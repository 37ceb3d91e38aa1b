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


class ConnectionLimits:
    """Whether a new connection may stay: the one rule, mirrored by the native loop's
    accept (python/src/netloop.cpp, ``connection_refusal``).

    A peer without the admin role may hold at most ``per_uid`` connections, and only the first
    ``total - reserve`` of all of them: a flood of one role-less uid (or of several) then
    leaves room for an admin to connect and act.
    """

    __slots__ = ("total", "per_uid", "reserve", "admin_uids", "admin_gids")

    def __init__(self, total: int, per_uid: int, reserve: int, admins: "tuple[list, list]"):
        self.total, self.per_uid, self.reserve = total, per_uid, reserve
        self.admin_uids, self.admin_gids = frozenset(admins[0]), frozenset(admins[1])

    def refusal(self, uid, gid, open_total: int, open_uid: int) -> Optional[str]:
        """Why a connection is refused (the ``too_many_connections`` message), or None.
        ``open_total`` and ``open_uid`` count it among the open ones."""
        if uid is not None and (uid in self.admin_uids or gid in self.admin_gids):
            if open_total > self.total:
                return f"the daemon serves at most {self.total} connections"
            return None
        if open_uid > self.per_uid:
            return (f"uid {uid} holds {self.per_uid} connections, the most a uid without the admin role may "
                    f"(--max-connections-per-uid)")
        others = max(0, self.total - self.reserve)
        if open_total > others:
            return (f"the daemon serves at most {others} connections to peers without the admin role "
                    f"(of {self.total}, {self.reserve} are kept for admins: --admin-connections)")
        return None
