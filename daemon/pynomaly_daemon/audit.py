"""What the daemon writes into the home's audit trail (``pynomaly.service.audit_record``):
administrative ops (``reload``) and refused access (``forbidden``: the allow-list or a role).

Entries are written from the thread pool, never on the event loop. Refusals are recorded at
most once per peer uid and second; the ones left out are counted in the next entry's detail
(``"suppressed"``), so a client hammering the socket cannot flood the home with writes. A
``--models`` folder has no repository: there the log line is the only record.
"""

from __future__ import annotations

import logging
import os
import time

from pynomaly import service
from pynomaly.store.audit import RefusalLimiter

log = logging.getLogger("pynomaly_daemon")

_REFUSAL_INTERVAL = 1.0  # seconds between recorded refusals of one uid


class Auditor:
    def __init__(self, daemon, home, *, audited: bool):
        self.d = daemon
        self.home = home
        self.audited = audited
        self._limiter = RefusalLimiter(_REFUSAL_INTERVAL)  # per peer uid

    def _origin(self, peer: str) -> str:
        return f"daemon pid={os.getpid()} socket={self.d.config.socket_path} peer {peer}"

    @staticmethod
    def _actor(uid, gid) -> str:
        return f"uid={uid} gid={gid}" if uid is not None else "unknown peer"

    def _write(self, **entry) -> None:
        try:
            service.audit_record(self.home, **entry)
        except Exception as e:  # noqa: BLE001 - the daemon keeps serving; the log keeps the record
            log.warning("audit trail: cannot record %s %s: %s", entry.get("action"), entry.get("target"), e)

    def _submit(self, **entry) -> None:
        if not self.audited or self.d.loop is None:
            return
        self.d.loop.run_in_executor(self.d.pool, lambda: self._write(**entry))

    def record(self, conn, action: str, target: str, outcome: str, detail=None) -> None:
        """An op done for ``conn`` (a connection of either path)."""
        self._submit(actor=self._actor(conn.uid, conn.gid), action=action, target=target,
                     origin=self._origin(conn.peer), outcome=outcome, detail=detail)

    def refused(self, peer: str, uid, gid, message: str) -> None:
        left_out = self._limiter.admit(uid, time.monotonic())
        if left_out is None:
            return
        detail = {"message": message}
        if left_out:
            detail["suppressed"] = left_out
        self._submit(actor=self._actor(uid, gid), action="refused", target=message.split(";")[-1].strip()[:200],
                     origin=self._origin(peer), outcome="forbidden", detail=detail)
