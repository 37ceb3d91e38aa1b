"""The audit trail's page, for admins: the newest entries (who did what to what, from where,
with what outcome), filtered by age and action, and whether the hash chain verifies (every
entry unchanged and none removed since it was written)."""

from __future__ import annotations

from starlette.responses import Response

from pynomaly import service

from ..state import ServerState
from .render import page, render

PERIODS = {"1d": "the last day", "7d": "the last week", "30d": "the last 30 days", "all": "all time"}
SHOWN = 500


def _view(home, since: str, action: str) -> dict:
    entries = service.audit_entries(home, None if since == "all" else since)
    if action:
        entries = [e for e in entries if e["action"].startswith(action)]
    return {"entries": entries[::-1][:SHOWN], "matched": len(entries), "chain": service.audit_verify(home)}


@page("manage")
async def audit_page(request, st: ServerState, p, form) -> Response:
    since = request.query_params.get("since", "7d")
    if since not in PERIODS:
        since = "7d"
    action = request.query_params.get("action", "").strip()[:64]
    view = await st.run(_view, st.home, since, action)
    return render(request, "audit.html", **view, since=since, action=action, periods=PERIODS, shown=SHOWN)
