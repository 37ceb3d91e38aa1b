"""What the HTTP face writes into the home's audit trail (``pynomaly.service.audit_record``):
every state-changing call (train, archive, activate, delete, import, export, dataset uploads
and deletes, saved detections, token creation) with its outcome, and every refused access
(401 and 403).

Entries are written from the server's threads, never on the event loop. Refusals are
recorded at most once per caller (token subject, else client address) and second; the ones
left out are counted in the next entry's detail (``"suppressed"``), so a client hammering
the server with bad tokens cannot flood the home with writes.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from pynomaly import service
from pynomaly.store.audit import RefusalLimiter

log = logging.getLogger("pynomaly_api")

_REFUSAL_INTERVAL = 1.0  # seconds between recorded refusals of one caller


def origin_of(client) -> str:
    """``"http 127.0.0.1:50412"`` from an ASGI ``client`` (host, port) pair, or a Unix socket."""
    if not client:
        return "http (unix socket)"
    return f"http {client[0]}:{client[1]}"


def actor_of(principal) -> str:
    return f"token:{principal.subject}" if principal is not None else "anonymous"


class Auditor:
    def __init__(self, home, run):
        self.home = home
        self._run = run  # run(fn, *args) -> awaitable, in the server's threads
        self._limiter = RefusalLimiter(_REFUSAL_INTERVAL)  # per token subject, else client address

    def write(self, entry: dict) -> None:
        """Record an entry now, in this thread (for work already running in the server's threads)."""
        try:
            service.audit_record(self.home, **entry)
        except Exception as e:  # noqa: BLE001 - the server keeps serving; the log keeps the record
            log.warning("audit trail: cannot record %s %s: %s", entry.get("action"), entry.get("target"), e)

    def submit(self, **entry) -> None:
        """Record an entry in the background (fire and forget, in the server's threads)."""
        try:
            self._run(self.write, entry)
        except RuntimeError:  # no running loop (shutting down): write it here
            self.write(entry)

    async def record(self, principal, client, action: str, target: str, outcome: str = "ok",
                     detail: Optional[dict] = None) -> None:
        """Record a state-changing call and wait until it is written (a caller told "done"
        can find it in the trail)."""
        await self._run(self.write, {"actor": actor_of(principal), "action": action, "target": str(target)[:200],
                                      "origin": origin_of(client), "outcome": outcome, "detail": detail})

    def refused(self, client, who: Optional[str], status: int, message: str, path: str) -> None:
        left_out = self._limiter.admit(who or (client[0] if client else "unix"), time.monotonic())
        if left_out is None:
            return
        detail = {"message": message[:300], "status": status}
        if left_out:
            detail["suppressed"] = left_out
        self.submit(actor=f"token:{who}" if who else "unauthenticated", action="refused", target=path[:200],
                    origin=origin_of(client), outcome="forbidden" if status == 403 else "unauthenticated",
                    detail=detail)
