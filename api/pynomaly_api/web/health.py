"""The health page: this server and the detection daemon, with times as people say them
("up 3 h", "started 3 h ago") and counters under names a reader understands."""

from __future__ import annotations

import os
import time

from starlette.responses import Response

from pynomaly import service

from ..state import ServerState
from .render import page, render

STARTED = time.time()

# Counter names as the code has them -> what the page calls them. A counter not named here is
# shown with its name's underscores as spaces.
READABLE = {
    "cache_hits": "Requests served by a loaded detector",
    "cache_misses": "Detector loads (cache misses)",
    "infer_requests": "Inference requests (OIP v2)",
    "infer_errors": "Inference requests refused or failed",
    "rows_scored": "Rows scored",
    "streamed_requests": "Requests scored while still arriving",
    "connections": "Open connections",
    "connections_total": "Connections since start",
    "in_flight": "Requests in progress",
    "native_calls": "Native scoring calls",
    "coalesced_requests": "Requests scored together with others",
    "cache_entries": "Loaded detectors",
    "cache_bytes": "Memory of loaded detectors",
    "copied_rows": "Rows copied before scoring (misaligned)",
    "fast_path_requests": "Requests on the native fast path",
}


def readable(counters: dict) -> list:
    """``[(label, value)]`` of a counters dict, bytes shown as MB; Unix times left out (the
    page shows the start as a time)."""
    out = []
    for k, v in counters.items():
        if k == "started" or k == "uptime_s":
            continue
        label = READABLE.get(k, k.replace("_", " ").capitalize())
        out.append((label, f"{v / 2 ** 20:.1f} MB" if k.endswith("_bytes") else v))
    return out


def _daemon_status() -> dict:
    from pynomaly import wire
    from pynomaly.client import Client

    path = wire.default_socket_path()
    if not os.path.exists(path):
        return {"running": False, "path": path, "why": "no socket there (start it with `pynomaly serve`)"}
    try:
        with Client(path, timeout=2.0) as c:
            h, s = c.health(), c.stats()
        stats = {k: getattr(s, k) for k in s.__struct_fields__ if k not in ("id", "requests", "errors")}
        return {"running": True, "path": path, "status": h.status, "version": h.version, "pid": h.pid,
                "started": time.time() - h.uptime_s, "stats": readable(stats),
                "requests": dict(s.requests), "errors": dict(s.errors)}
    except Exception as e:  # noqa: BLE001 - shown as the daemon's state
        return {"running": False, "path": path, "why": f"{type(e).__name__}: {e}"[:300]}


@page("read")
async def health(request, st: ServerState, p, form) -> Response:
    from pynomaly import __version__

    daemon = await st.run(_daemon_status)
    n_detectors = len(await st.run(service.list_detectors, st.home))
    cache = st.cache
    api = {"ready": st.ready, "version": __version__, "pid": os.getpid(), "started": STARTED,
           "home": str(st.home), "detectors": n_detectors, "authentication": st.verifier is not None,
           "max_body_mb": st.settings.max_body_bytes / 2 ** 20, "counters": readable(dict(cache.counters)),
           "cached_detectors": len(cache), "cache_mb": cache.size / 2 ** 20}
    return render(request, "health.html", api=api, daemon=daemon)
