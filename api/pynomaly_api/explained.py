"""Explanations on the detection API (issue 22): a detect request's ``explain: K`` checked,
and each anomaly's top K features, as the detection computed them and the result keeps them."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

from pynomaly import service

from .errors import HTTPError


class TopFeature(BaseModel):
    feature: str
    value: float = Field(description="the row's value of the feature")
    attribution: float = Field(description="the feature's share of the row's score (the detector's explain)")


def wanted(k: Optional[int], method: Optional[str], n_features: int) -> bool:
    """Whether a request asks for explanations, its K checked (1 to ``n_features``) before any work."""
    if k is None:
        if method is not None:
            raise HTTPError(400, "explain_method applies to explanations: give explain (K, the top features per anomaly)")
        return False
    service.check_top_k(k, n_features)
    return True


def add_top_features(anomalies: list, result) -> None:
    """Give each anomaly (dicts with ``sample_index``) its ``top_features``, those the result
    keeps (``result.top_features``: computed by the detection, stored with a saved result)."""
    top = result.top_features
    if top is None:
        return
    for a in anomalies:
        a["top_features"] = top.get(a["sample_index"])
