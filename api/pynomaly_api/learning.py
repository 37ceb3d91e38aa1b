"""The detection API's way to have a streaming detector learn (issue 23):
``POST /api/v1/detectors/{name}/learn`` with a batch of rows, scored and then learned one by
one in order, in the detector's lane (:mod:`pynomaly.serving.learning`, shared with OIP infer's
``learn`` parameter and the daemon). Operator or above (the ``learn`` action)."""

from __future__ import annotations

from typing import List

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from pynomaly.domain import check_name

from .detection import DetectionOut, allow, declare_errors, detection_out
from .errors import HTTPError
from .state import ServerState, state_of
from .tokens import Principal

router = APIRouter(prefix="/api/v1")


class LearnIn(BaseModel):
    data: List[List[float]] = Field(description="rows, in the order the detector scores and then learns them")
    include_scores: bool = Field(False, description="return every row's score too")


@router.post("/detectors/{name}/learn", summary="A streaming detector scores, then learns, each row in order",
             response_model=DetectionOut, response_model_exclude_none=True)
async def learn(name: str, body: LearnIn, request: Request, _: Principal = Depends(allow("learn"))) -> dict:
    st: ServerState = state_of(request)
    scorer = await st.plane.scorer(check_name(name), None)
    data = np.asarray(body.data, dtype=np.float64) if body.data else np.empty((0, scorer.version.n_features))
    if data.ndim != 2:
        raise HTTPError(400, "data must be a list of rows of the same length")
    scorer, scores = await st.learned(scorer, data, True)
    st.plane.decide(scorer, None, scores)  # counted for the metrics and alert rules, as every detection
    return detection_out(scorer.decide(scores), name, body.include_scores)


declare_errors(router)
