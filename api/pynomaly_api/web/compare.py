"""A detector's versions side by side: parameters (the ones that differ marked), threshold,
training data, and the training score distributions overlaid on one chart."""

from __future__ import annotations

import numpy as np
from starlette.responses import Response

from pynomaly import service

from ..errors import HTTPError
from ..state import ServerState
from . import charts
from .render import page, render


def _version_number(text: str, label: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise HTTPError(400, f"{label} must be a version number, got {str(text)[:20]!r}") from None


def _comparison(home, name: str, chosen: list) -> dict:
    versions = {v["version"]: v for v in service.versions(home, name)}
    missing = [n for n in chosen if n not in versions]
    if missing:
        raise HTTPError(404, f"{name!r} has no version {missing[0]} (it has {', '.join(map(str, versions))})")
    picked = [versions[n] for n in chosen]
    keys = sorted(set().union(*(v["parameters"] for v in picked)))
    params = [{"key": k, "cells": [v["parameters"].get(k, "–") for v in picked],
               "differs": len({repr(v["parameters"].get(k)) for v in picked}) > 1} for k in keys]
    series, summaries = [], []
    for v in picked:
        scores = service.training_scores(home, name, v["version"])
        series.append((f"v{v['version']}", scores, v["threshold"]))
        summaries.append(None if scores is None else {
            "n": int(scores.size), "min": float(scores.min()), "median": float(np.median(scores)),
            "max": float(scores.max())})
    datasets = {}
    for v in picked:
        did = v.get("dataset_id")
        if did and did not in datasets:
            try:
                datasets[did] = service.dataset(home, did)
            except Exception:  # noqa: BLE001 - a forgotten dataset: shown by id only
                datasets[did] = None
    return {"picked": picked, "params": params, "summaries": summaries, "datasets": datasets,
            "chart": charts.overlaid(series), "all_versions": sorted(versions)}


@page("read")
async def compare(request, st: ServerState, p, form) -> Response:
    name = request.path_params["name"]
    qp = request.query_params
    everything = [v["version"] for v in await st.run(service.versions, st.home, name)]
    if not everything:
        raise HTTPError(404, f"{name!r} has no trained version to compare")
    a = _version_number(qp.get("a"), "the first version") if qp.get("a") else everything[max(0, len(everything) - 2)]
    b = _version_number(qp.get("b"), "the second version") if qp.get("b") else everything[-1]
    chosen = [a] if a == b else [a, b]
    view = await st.run(_comparison, st.home, name, chosen)
    return render(request, "compare.html", name=name, a=a, b=b, **view)
