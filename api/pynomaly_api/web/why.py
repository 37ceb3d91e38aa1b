"""Why a result's rows are anomalous, on the result page (issue 22): each top row's top
features, and one selected row's attributions as a bar chart drawn on the server next to its
values and the training medians. The attributions are the detector's (``Scorer.explain``)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from pynomaly import PynomalyError, service

from . import charts

TOP_FEATURES = 3  # named per row in the top rows' table
BARS = 20  # the selected row's chart shows at most this many features, largest |attribution| first


def training_medians(home, name: str, version: int, names) -> Optional[np.ndarray]:
    """Each feature's training median from the version's drift reference (its quantile bins:
    100 by default, so to within a percentile), or None where there is no reference."""
    from pynomaly.service import drift_live

    try:
        _, profile = drift_live.reference(home, name, version)
    except PynomalyError:
        return None
    if list(profile.feature_names) != list(names):
        return None
    return np.array([h.edges[min(np.searchsorted(h.cum, 0.5), h.edges.size - 1)] for h in profile.features])


def add(view: dict, home, name: str, version: int, X: np.ndarray, selected: Optional[int]) -> None:
    """Explain the view's top rows (and the ``selected`` row, default the top one) of X: each
    top row gets ``why`` (its top features' names), the view ``why`` (the selected row's
    chart and table) or ``why_error`` (why there is no explanation)."""
    top = [row["index"] for row in view["top"]]
    if selected is None:
        selected = top[0]
    rows = top + ([selected] if selected not in top else [])
    try:
        e = service.load_for_scoring(home, name, version).explain(X[rows])
    except PynomalyError as err:
        view["why_error"] = str(err)
        return
    names = e.feature_names
    for row, idx in zip(view["top"], e.top_indices(min(TOP_FEATURES, len(names)))):
        row["why"] = [names[j] for j in idx]
    i = rows.index(selected)
    values = e.values[i]
    order = np.argsort(-np.abs(values), kind="stable")[:BARS]
    medians = training_medians(home, name, version, names)
    view["why"] = {
        "row": selected, "method": e.method, "output": e.output,
        "chart": charts.attribution_bars([names[j] for j in order], values[order], e.anomalous_sign),
        "features": [{"name": names[j], "value": float(e.data[i, j]), "attribution": float(values[j]),
                      "median": None if medians is None else float(medians[j])} for j in order],
    }


def kept(view: dict, result, limit: int) -> None:
    """The top features the detection kept with ``result`` (a detection API request's
    ``explain: K``): ``stored_why``, its ``limit`` highest-scoring anomalies with each of their
    top features' name, value and attribution, as the request returned them."""
    top = result.top_features
    if not top:
        return
    scores = result.scores
    rows = sorted(top, key=lambda i: (-scores[i], i))[:limit]
    view["stored_why"] = [{"index": i, "score": float(scores[i]), "features": top[i]} for i in rows]
