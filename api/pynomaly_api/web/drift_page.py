"""A detector's drift panel (issue 24): its features ranked by drift (PSI with a small bar, KS,
p-value, Wasserstein-1, the decision) and the served scores' distribution drawn over the
training one, from the same document as ``pynomaly drift`` and ``GET .../drift``."""

from __future__ import annotations

import asyncio

from starlette.responses import Response

from pynomaly.service import drift, drift_live

from ..state import ServerState
from . import charts
from .render import page, render


def _drift_view(home, name: str, window) -> dict:
    try:
        doc = drift.report(home, name, window=window)
    except drift.DriftUnavailableError as e:  # no reference, or nothing served yet: said on the page
        return {"doc": None, "reason": str(e)}
    v, profile = drift.reference(home, name, doc["version"])
    top = max([f["psi"] for f in doc["features"]] + [2 * doc["psi_threshold"]])
    rows = [dict(f, bar=charts.psi_bar(f["psi"], top, f["drift"])) for f in doc["features"]]
    chart = ""
    if profile.score is not None:
        counts = drift_live.window_counts(home, name, v, profile, doc["window_s"])
        if counts.score.sum():
            chart = charts.score_drift(profile.score.edges, profile.score.fractions,
                                       counts.score / counts.score.sum(), profile.threshold)
    return {"doc": doc, "rows": rows, "chart": chart, "reason": None}


@page("read")
async def drift_panel(request, st: ServerState, p, form) -> Response:
    name = request.path_params["name"]
    text = request.query_params.get("window") or "1h"
    window = drift.parse_window(text)
    await asyncio.wrap_future(st.observer.hand_over_drift())  # what this server scored just before counts
    view = await st.run(_drift_view, st.home, name, window)
    return render(request, "drift.html", name=name, window=text[:20], **view)
