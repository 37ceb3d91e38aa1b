"""The detection API (JSON, under ``/api/v1``): detectors and their versions, datasets,
detections and their stored results, training, import/export and tokens. Each endpoint checks
the caller's role, then calls one service function. Work that touches the repository or trains
runs in the server's threads; detection uses the server's cached Scorer, as OIP's routes do.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator
from starlette.responses import Response, StreamingResponse

from pynomaly import service
from pynomaly._errors import UntrustedPickleError
from pynomaly.domain import DetectionResult, check_name

from . import explained, spool, tensors
from .audit import actor_of
from .body import read_body
from .errors import HTTPError, status_of
from .state import ServerState, state_of
from .tokens import ROLES, ForbiddenError, Principal, create_token, parse_ttl

router = APIRouter(prefix="/api/v1")
_bearer = HTTPBearer(auto_error=False, description="a token from `pynomaly token create`")


def allow(action: str):
    """A dependency: the caller, if its role may do ``action`` (401/403 otherwise)."""

    def check(request: Request, _: Optional[HTTPAuthorizationCredentials] = Depends(_bearer)) -> Principal:
        return state_of(request).authorize(request, action)

    return check


def _name(name: str) -> str:
    return check_name(name)


async def audited(request: Request, who: Principal, action: str, target: str, work, detail=None):
    """``await work()``, recorded in the audit trail with its outcome (ok, or the error's
    message) before the answer goes out."""
    st = state_of(request)
    try:
        result = await work()
    except Exception as e:
        status, message, _ = status_of(e)
        await st.audit.record(who, request.client, action, target, f"error: {message}"[:300], {"status": status})
        raise
    await st.audit.record(who, request.client, action, target, "ok", detail(result) if callable(detail) else detail)
    return result


# -- schemas ---------------------------------------------------------------------------------
class Anomaly(BaseModel):
    sample_index: int
    score: float
    confidence: float = Field(description="share of this batch's rows scoring at most as high")
    top_features: Optional[List[explained.TopFeature]] = Field(None, description="with explain: K, its top K features")


class Metrics(BaseModel):
    total_samples: int
    anomalies_detected: int
    anomaly_rate: float
    processing_time_ms: float


class DetectionOut(BaseModel):
    detection_id: str
    detector: Optional[str] = None
    detector_id: str
    version: int
    dataset_id: Optional[str] = None
    threshold: float
    created_at: str
    anomalies: List[Anomaly]
    metrics: Metrics
    scores: Optional[List[float]] = None


class DetectIn(BaseModel):
    detector: str
    version: Optional[int] = Field(None, ge=1)
    dataset_id: Optional[str] = None
    data: Optional[List[List[float]]] = Field(None, description="rows to score inline (instead of dataset_id)")
    columns: Optional[List[str]] = None
    threshold: Optional[float] = None
    contamination: Optional[float] = None
    save: bool = True
    include_scores: bool = Field(False, description="return every row's score too")
    explain: Optional[int] = Field(None, description="K (1 to d): each anomaly's top K features (stored with it)")
    explain_method: Optional[str] = Field(None, max_length=64, description="how to explain (default: the detector's)")


def _not_too_deep(value):
    if tensors.nested_too_deep(value):
        raise ValueError(tensors.too_deep_message())
    return value


class TrainIn(BaseModel):
    dataset_id: str
    algorithm: str = "IsolationForest"
    params: Dict[str, Any] = Field(default_factory=dict)
    _params_depth = field_validator("params")(_not_too_deep)
    columns: Optional[List[str]] = None
    activate: bool = True


class TokenIn(BaseModel):
    user: str
    role: str = Field(description=" | ".join(ROLES))
    ttl: str = "24h"


def detection_out(result: DetectionResult, name: Optional[str], include_scores: bool = False) -> dict:
    """The API's form of a result, each anomaly with its top features where the result has them."""
    scores = result.scores
    anomalies = [{"sample_index": int(i), "score": float(scores[i]), "confidence": float(a.confidence)}
                 for i, a in result.anomalies]
    explained.add_top_features(anomalies, result)
    return {
        "detection_id": result.id,
        "detector": name,
        "detector_id": result.detector_id,
        "version": result.detector_version,
        "dataset_id": result.dataset_id,
        "threshold": result.threshold,
        "created_at": result.timestamp.isoformat(),
        "anomalies": anomalies,
        "metrics": result.metrics,
        "scores": scores.tolist() if include_scores else None,
    }


# -- detectors -------------------------------------------------------------------------------
@router.get("/detectors", summary="List detectors")
async def list_detectors(request: Request, _: Principal = Depends(allow("read"))) -> List[dict]:
    st = state_of(request)
    return [d.to_dict() for d in await st.run(service.list_detectors, st.home)]


@router.get("/detectors/{name}", summary="A detector with its versions and results")
async def show_detector(name: str, request: Request, _: Principal = Depends(allow("read"))) -> dict:
    st = state_of(request)
    return await st.run(service.show, st.home, _name(name))


@router.get("/detectors/{name}/versions", summary="A detector's versions")
async def detector_versions(name: str, request: Request, _: Principal = Depends(allow("read"))) -> List[dict]:
    st = state_of(request)
    return await st.run(service.versions, st.home, _name(name))


@router.get("/detectors/{name}/results", summary="A detector's stored detection results (newest last)")
async def detector_results(name: str, request: Request, _: Principal = Depends(allow("read"))) -> List[dict]:
    st = state_of(request)
    return await st.run(service.results, st.home, _name(name))


@router.get("/detectors/{name}/drift", summary="Has what the detector serves drifted from its training data?")
async def detector_drift(name: str, request: Request,
                         window: Optional[str] = Query(None, max_length=20, description="e.g. 15m, 1h (default), 7d"),
                         version: Optional[int] = Query(None, ge=1),
                         method: str = Query("psi", pattern="^(psi|ks)$", description="decide by PSI, or by KS p-value"),
                         psi: float = Query(0.2, gt=0, description="the PSI threshold"),
                         alpha: float = Query(0.05, gt=0, lt=1, description="the KS tests' significance level"),
                         min_rows: Optional[int] = Query(None, ge=1, description="rows needed to decide (300)"),
                         _: Principal = Depends(allow("read"))) -> dict:
    """The drift document (``pynomaly drift --json``'s), most drifted first; no decision below
    ``min_rows`` rows (its ``reason``); 409 without a reference or rows in the window."""
    from pynomaly.service import drift

    st, seconds = state_of(request), None if window is None else drift.parse_window(window)
    await asyncio.wrap_future(st.observer.hand_over_drift())  # what this server scored just before counts
    return await st.run(lambda: drift.report(st.home, _name(name), version=version, window=seconds, method=method,
                                             psi_threshold=psi, alpha=alpha, min_rows=min_rows))


async def _lifecycle(request: Request, who: Principal, verb: str, fn, name: str) -> dict:
    st = state_of(request)

    async def work():
        d = await st.run(fn, st.home, _name(name))
        st.cache.invalidate(name)  # this process at once; other workers at their next refresh
        return d.to_dict()

    return await audited(request, who, verb, name, work)


@router.post("/detectors/{name}/archive", summary="Retire a detector (keeps its versions)")
async def archive(name: str, request: Request, who: Principal = Depends(allow("manage"))) -> dict:
    return await _lifecycle(request, who, "archive", service.archive, name)


@router.post("/detectors/{name}/activate", summary="Make a detector detect again")
async def activate(name: str, request: Request, who: Principal = Depends(allow("manage"))) -> dict:
    return await _lifecycle(request, who, "activate", service.activate, name)


@router.delete("/detectors/{name}", summary="Delete a detector with its versions and results")
async def delete(name: str, request: Request, who: Principal = Depends(allow("manage"))) -> dict:
    st = state_of(request)

    async def work():
        n = await st.run(service.delete, st.home, _name(name))
        st.cache.invalidate(name)
        return {"deleted": name, "versions": n}

    return await audited(request, who, "delete", name, work)


@router.post("/detectors/{name}/train", summary="Train the next version of a detector on a stored dataset")
async def train(name: str, body: TrainIn, request: Request, who: Principal = Depends(allow("train"))) -> dict:
    st = state_of(request)

    async def work():
        d = await st.run(lambda: service.train(st.home, _name(name), None, body.algorithm, body.params,
                                               columns=body.columns, activate=body.activate,
                                               dataset_id=body.dataset_id))
        return d.to_dict()

    return await audited(request, who, "train", name, work,
                         lambda d: {"version": d["version"], "algorithm": body.algorithm, "dataset_id": body.dataset_id})


@router.get("/detectors/{name}/export", summary="A detector version as one export file",
            response_class=Response)
async def export(name: str, request: Request, version: Optional[int] = Query(None, ge=1),
                 who: Principal = Depends(allow("manage"))) -> Response:
    st = state_of(request)

    def write() -> bytes:
        with tempfile.TemporaryDirectory(prefix="pynomaly-export-") as tmp:
            path = Path(tmp) / f"{name}.pnx"
            service.export(st.home, _name(name), path, version)
            return path.read_bytes()

    blob = await audited(request, who, "export", f"{name}@{version or 'latest'}", lambda: st.run(write))
    return Response(blob, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}.pnx"'})


@router.post("/detectors/import", summary="Import an export file (the request body) as a detector's next version")
async def import_detector(request: Request, name: Optional[str] = None,
                          who: Principal = Depends(allow("manage"))) -> dict:
    # No trust_pickle here: trusting a pickle is running its code on every replica that shares
    # the home's key, a decision for whoever holds the machine, never for a network caller
    # (issue 25). A pickled export signed by this home's own key is still accepted.
    if "trust_pickle" in request.query_params:
        raise HTTPError(400, "the HTTP import takes no trust_pickle: " + _PICKLE_ON_THE_MACHINE)
    st = state_of(request)
    blob = await read_body(request, st.settings.max_body_bytes)
    if not blob:
        raise HTTPError(400, "the body is empty: send the bytes of a file written by `pynomaly export`")

    def load():
        with tempfile.TemporaryDirectory(prefix="pynomaly-import-") as tmp:
            path = Path(tmp) / "upload.pnx"
            path.write_bytes(blob)
            try:
                return service.import_detector(st.home, path, name)
            except UntrustedPickleError:
                raise HTTPError(403, "this export holds a pickled model signed by another home's key; "
                                + _PICKLE_ON_THE_MACHINE) from None

    d = await audited(request, who, "import", name or "(its exported name)", lambda: st.run(load),
                      lambda d: {"name": d.name, "version": d.version})
    st.cache.invalidate(d.name)
    return d.to_dict()


_PICKLE_ON_THE_MACHINE = (
    "a pickle runs code when loaded, so only someone on the server's machine can choose to trust one: "
    "copy the file there and run `pynomaly --home HOME import FILE --trust-pickle`")


# -- datasets --------------------------------------------------------------------------------
_SUFFIXES = (".csv", ".tsv", ".npy", ".npz", ".parquet")
_TYPES = {
    "text/csv": ".csv",
    "text/tab-separated-values": ".tsv",
    "application/x-npy": ".npy",
    "application/vnd.apache.parquet": ".parquet",
    "application/x-parquet": ".parquet",
}


def _suffix(filename: Optional[str], content_type: str) -> str:
    if filename:
        s = Path(filename).suffix.lower()
        if s in _SUFFIXES:
            return s
        raise HTTPError(415, f"{Path(filename).name[:80]!r}: upload a .csv, .tsv, .npy, .npz or .parquet file")
    s = _TYPES.get(content_type)
    if s is None:
        raise HTTPError(415, f"Content-Type {content_type[:60]!r} is not a dataset: send multipart/form-data with a "
                        "file, or text/csv, application/x-npy or application/vnd.apache.parquet with ?name=")
    return s


@router.post("/datasets", summary="Upload a dataset (CSV, Parquet, .npy or .npz); returns its id",
             status_code=201)
async def upload_dataset(request: Request, name: Optional[str] = Query(None, max_length=200),
                         who: Principal = Depends(allow("upload"))) -> dict:
    st = state_of(request)
    body = await read_body(request, st.settings.max_body_bytes)
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    filename = name
    if ctype == "multipart/form-data":
        request._body = body  # parse what was read within the limit
        form = await request.form(max_files=1, max_fields=4)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPError(400, "the form has no file field named 'file'")
            filename = name or (form.get("name") if isinstance(form.get("name"), str) else None) or upload.filename
            data = await upload.read()
        finally:
            await form.close()
    else:
        data = body
    if not data:
        raise HTTPError(400, "the uploaded file is empty")
    suffix = _suffix(filename, ctype)

    def store():
        with spool.upload_file(data, suffix, st.settings) as tmp, spool.disk_full_is_507("the dataset"):
            return service.store_dataset(st.home, tmp, name=Path(filename).name if filename else f"upload{suffix}")

    return await audited(request, who, "dataset.store", filename or f"upload{suffix}", lambda: st.run(store),
                         lambda d: {"id": d["id"], "rows": d["n_rows"], "columns": d["n_columns"]})


@router.get("/datasets", summary="List datasets")
async def list_datasets(request: Request, _: Principal = Depends(allow("read"))) -> List[dict]:
    st = state_of(request)
    return await st.run(service.list_datasets, st.home)


@router.get("/datasets/{dataset_id}", summary="A dataset's description")
async def show_dataset(dataset_id: str, request: Request, _: Principal = Depends(allow("read"))) -> dict:
    st = state_of(request)
    return await st.run(service.dataset, st.home, dataset_id)


@router.delete("/datasets/{dataset_id}", summary="Delete a stored dataset")
async def delete_dataset(dataset_id: str, request: Request, who: Principal = Depends(allow("manage"))) -> dict:
    st = state_of(request)
    await audited(request, who, "dataset.delete", dataset_id, lambda: st.run(service.delete_dataset, st.home, dataset_id))
    return {"deleted": dataset_id}


# -- detection -------------------------------------------------------------------------------
@router.post("/detect", summary="Detect anomalies in a stored dataset or inline rows", response_model=DetectionOut,
             response_model_exclude_none=True)
async def detect(body: DetectIn, request: Request, who: Principal = Depends(allow("detect"))) -> dict:
    st: ServerState = state_of(request)
    if (body.dataset_id is None) == (body.data is None):
        raise HTTPError(400, "give either dataset_id or data (rows), not both")
    name = _name(body.detector)
    scorer = await st.plane.scorer(name, body.version)
    data = None
    if body.data is not None:
        data = np.asarray(body.data, dtype=np.float64) if body.data else np.empty((0, scorer.version.n_features))
        if data.ndim != 2:
            raise HTTPError(400, "data must be a list of rows of the same length")
    explain = explained.wanted(body.explain, body.explain_method, scorer.version.n_features)

    def work():
        return st.run(lambda: service.detect(
            st.home, name, data, version=scorer.version.version, threshold=body.threshold,
            contamination=body.contamination, columns=body.columns, save=body.save, dataset_id=body.dataset_id,
            scorer=scorer, face="http", explain=explain, explain_method=body.explain_method, top_k=body.explain))

    # A stored result is a change to the home: recorded, as the CLI records it.
    result = await (audited(request, who, "detect", f"{name}@{scorer.version.version}", work,
                            lambda r: {"result": r.id, "rows": int(r.scores.shape[0])}) if body.save else work())
    # In /metrics with the infer requests' (service.detect has queued its alerts already).
    st.observer.count(name, result.metrics["total_samples"], result.metrics["anomalies_detected"])
    return detection_out(result, name, body.include_scores)


@router.get("/results/{result_id}", summary="A stored detection result", response_model=DetectionOut,
            response_model_exclude_none=True)
async def get_result(result_id: str, request: Request, include_scores: bool = False,
                     _: Principal = Depends(allow("read"))) -> dict:
    st = state_of(request)

    def load():
        r = service.result(st.home, result_id)
        name = next((d.name for d in service.list_detectors(st.home) if d.id == r.detector_id), None)
        return r, name

    r, name = await st.run(load)
    return detection_out(r, name, include_scores)


# -- background jobs (issue 12) ---------------------------------------------------------------------
class JobIn(BaseModel):
    kind: str = Field(description="train | detect")
    params: Dict[str, Any] = Field(description="train: detector, dataset_id, algorithm, params, columns, activate; "
                                   "detect: detector, dataset_id, version, threshold, contamination, columns")
    _params_depth = field_validator("params")(_not_too_deep)


_JOB_ACTIONS = {"train": "train", "detect": "detect"}  # the role a job of each kind needs


def _job_action(kind: str) -> str:
    action = _JOB_ACTIONS.get(kind)
    if action is None:
        raise HTTPError(400, f"unknown job kind {str(kind)[:40]!r}; accepted: {', '.join(_JOB_ACTIONS)}")
    return action


@router.post("/jobs", summary="Queue a training or detection job on a stored dataset; returns its id at once",
             status_code=202)
async def submit_job(body: JobIn, request: Request, who: Principal = Depends(allow("read"))) -> dict:
    from pynomaly.service import jobs

    st = state_of(request)
    try:
        who.require(_job_action(body.kind))
    except ForbiddenError as e:
        st.audit.refused(request.client, who.subject, 403, str(e), request.url.path)
        raise
    if "data" in body.params:  # a path would be read on the server's machine: never from a client
        raise HTTPError(400, "a job over HTTP reads a stored dataset: give 'dataset_id' (upload the data with "
                        "POST /api/v1/datasets), not a 'data' path")
    if "dataset_id" not in body.params:
        raise HTTPError(400, "a job needs 'dataset_id': a stored dataset (POST /api/v1/datasets)")
    await st.run(service.dataset, st.home, str(body.params["dataset_id"]))  # 404 now, not in the worker
    target = str(body.params.get("detector", ""))
    job_id = await audited(request, who, f"job.{body.kind}", target,
                           lambda: st.run(lambda: jobs.submit(str(st.home), body.kind, dict(body.params),
                                                              actor=actor_of(who))),
                           lambda jid: {"job": jid})
    return {"id": job_id, "state": "queued", "url": f"/api/v1/jobs/{job_id}"}


@router.get("/jobs", summary="Jobs, newest first")
async def list_jobs(request: Request, state: Optional[str] = None, limit: int = Query(100, ge=1, le=1000),
                    _: Principal = Depends(allow("read"))) -> List[dict]:
    from pynomaly.service import jobs

    st = state_of(request)
    return await st.run(lambda: jobs.list_jobs(str(st.home), state=state, limit=limit))


@router.get("/jobs/{job_id}", summary="A job: state, stage, progress, result or error")
async def get_job(job_id: str, request: Request, _: Principal = Depends(allow("read"))) -> dict:
    from pynomaly.service import jobs

    st = state_of(request)
    return await st.run(jobs.get, str(st.home), job_id)


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
async def cancel_job(job_id: str, request: Request, who: Principal = Depends(allow("read"))) -> dict:
    from pynomaly.service import jobs

    st = state_of(request)
    job = await st.run(jobs.get, str(st.home), job_id)
    try:
        who.require(_job_action(job["kind"]))  # whoever may run such a job may cancel it
    except ForbiddenError as e:
        st.audit.refused(request.client, who.subject, 403, str(e), request.url.path)
        raise
    return await audited(request, who, "job.cancel", job["id"], lambda: st.run(jobs.cancel, str(st.home), job["id"]))


@router.get("/jobs/{job_id}/events", summary="Server-sent events: the job each time it changes, until it ends",
            response_class=StreamingResponse)
async def job_events(job_id: str, request: Request, _: Principal = Depends(allow("read"))):
    from pynomaly.service import jobs

    st = state_of(request)
    watch = jobs.watch(str(st.home), job_id, timeout=st.settings.request_timeout_s * 10)
    first = await st.run(next, watch, None)  # an unknown job is a 404 here, before the stream starts

    async def events():
        job = first
        try:
            while job is not None:
                yield f"event: job\ndata: {json.dumps(job)}\n\n"
                if await request.is_disconnected():
                    return
                job = await st.run(next, watch, None)
        finally:
            await st.run(watch.close)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


# -- the server ----------------------------------------------------------------------------------
@router.get("/stats", summary="This server process's counters and loaded detectors")
async def stats(request: Request, _: Principal = Depends(allow("read"))) -> dict:
    st = state_of(request)
    c = dict(st.counters)
    return {
        "pid": os.getpid(),
        "uptime_s": time.time() - c.pop("started"),
        "counters": c,
        "loaded": [{"name": n, "version": v, "bytes": s.size_bytes} for (n, v), s in st.cache.entries.items()],
        "cache_bytes": st.cache.size,
        "cache_limit_bytes": st.cache.max_bytes,
        "auth": st.verifier is not None,
    }


# -- tokens ----------------------------------------------------------------------------------
@router.post("/tokens", summary="Create a token for a user and role", status_code=201)
async def new_token(body: TokenIn, request: Request, who: Principal = Depends(allow("tokens"))) -> dict:
    st = state_of(request)
    if st.verifier is None:
        raise HTTPError(409, "this server runs without authentication (--no-auth): it checks no tokens")

    async def work():
        return create_token(st.home, body.user, body.role, parse_ttl(body.ttl), issuer=st.settings.issuer,
                            audience=st.settings.audience)

    token, expires = await audited(request, who, "token.create", f"{body.user} ({body.role})", work,
                                   {"ttl": body.ttl})
    return {"token": token, "user": body.user, "role": body.role, "expires_at": expires.isoformat()}


# -- the statuses each route answers, declared in the OpenAPI document --------------------------------
class Error(BaseModel):
    """Every error's body."""

    error: str = Field(description="what was wrong, and what is accepted")


_WHY = {
    400: "bad request: a malformed body, parameter or name, or a value out of range",
    401: "no token, or one that is malformed, expired, revoked or signed with an unknown key",
    403: "the token's role may not do this",
    404: "no such detector, version, dataset, result or job",
    409: "not possible in the detector's or the server's state (e.g. an archived detector)",
    413: "the body is larger than the server's --max-body, also once decompressed",
    415: "a Content-Type or Content-Encoding the route does not read",
    503: "the home's database cannot be reached; retry (Retry-After)",
    507: "no room left on the server to store the upload",
}
_EVERY_ROUTE = (401, 503)
# Besides those, by route: what each can answer (tests/api/test_http_security.py probes every route
# and checks that what comes back is declared here).
_ROUTE_ERRORS = {
    ("GET", "/api/v1/detectors"): (),
    ("GET", "/api/v1/detectors/{name}"): (400, 404),
    ("GET", "/api/v1/detectors/{name}/versions"): (400, 404),
    ("GET", "/api/v1/detectors/{name}/results"): (400, 404),
    ("GET", "/api/v1/detectors/{name}/drift"): (400, 404, 409),
    ("POST", "/api/v1/detectors/{name}/archive"): (400, 403, 404),
    ("POST", "/api/v1/detectors/{name}/activate"): (400, 403, 404),
    ("DELETE", "/api/v1/detectors/{name}"): (400, 403, 404),
    ("POST", "/api/v1/detectors/{name}/train"): (400, 403, 404, 409, 413, 415),
    ("GET", "/api/v1/detectors/{name}/export"): (400, 403, 404),
    ("POST", "/api/v1/detectors/import"): (400, 403, 409, 413, 415),
    ("POST", "/api/v1/datasets"): (400, 403, 413, 415, 507),
    ("GET", "/api/v1/datasets"): (),
    ("GET", "/api/v1/datasets/{dataset_id}"): (404,),
    ("DELETE", "/api/v1/datasets/{dataset_id}"): (403, 404, 409),
    ("POST", "/api/v1/detect"): (400, 403, 404, 409, 413, 415),
    ("POST", "/api/v1/detectors/{name}/learn"): (400, 403, 404, 409, 413, 415),  # in learning.py
    ("GET", "/api/v1/results/{result_id}"): (400, 404),
    ("POST", "/api/v1/jobs"): (400, 403, 404, 413, 415),
    ("GET", "/api/v1/jobs"): (400,),
    ("GET", "/api/v1/jobs/{job_id}"): (404,),
    ("POST", "/api/v1/jobs/{job_id}/cancel"): (403, 404, 409),
    ("GET", "/api/v1/jobs/{job_id}/events"): (404,),
    ("GET", "/api/v1/stats"): (),
    ("POST", "/api/v1/tokens"): (400, 403, 409, 413, 415),
}


def declare_errors(router: APIRouter) -> None:  # each route's error statuses into its OpenAPI entry
    for route in router.routes:
        for method in route.methods:
            codes = _ROUTE_ERRORS[(method, route.path)]  # a new route needs its line above
            route.responses.update({c: {"model": Error, "description": _WHY[c]}
                                    for c in sorted(set(_EVERY_ROUTE) | set(codes))})


declare_errors(router)
