"""The web pages: plain Starlette routes rendering Jinja2 templates over the service layer.

Every page checks its caller with the API's roles (a session cookie holding an API token,
see :mod:`pynomaly_api.sessions`) and every form its CSRF token; detection uses the server's
cached :class:`~pynomaly.service.Scorer`, as the API does. Failures become a page with a
readable message and the status the API would answer (no traceback, ever).
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Optional
from urllib.parse import quote

import numpy as np
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pynomaly import PynomalyError, service
from pynomaly.store.revocations import revoke_token
from pynomaly.serving import DetectorUnavailable

from .. import sessions, tensors
from ..errors import HTTPError, status_of
from ..state import ServerState, state_of
from ..audit import actor_of, origin_of
from ..detection import audited
from ..tokens import TokenError
from . import charts, why
from .jobs import JOBS
from .render import SIGNIN_MESSAGES, epoch, error_page, over_tls, page, read_form, render, safe_next
from .uploads import ROWS, check_upload, read_upload, upload_file

TOP_ROWS = 20  # rows in a result's table of top anomalies
ALGORITHMS = ("IsolationForest", "LOF", "KNN", "pyod.ECOD", "pyod.IForest", "TorchAutoEncoder", "JaxDeepSVDD")


# -- signing in -------------------------------------------------------------------------------
async def signin_page(request: Request) -> Response:
    st = state_of(request)
    p = sessions.principal(st, request)
    nxt = safe_next(request.query_params.get("next"))
    if p is not None:
        return RedirectResponse(nxt, status_code=303)
    why = SIGNIN_MESSAGES.get(request.query_params.get("why", ""), "")
    return render(request, "signin.html", 200, next=nxt, why=why)


async def signin(request: Request) -> Response:
    st = state_of(request)
    try:
        form = await read_form(request, 64 * 1024)
    except Exception as e:  # noqa: BLE001
        return error_page(request, e)
    nxt = safe_next(form.get("next"))
    if st.verifier is None:
        return RedirectResponse(nxt, status_code=303)

    def again(message: str, status: int = 401) -> Response:
        return render(request, "signin.html", status, next=nxt, why=message, user_name=form.get("user", ""))

    if not sessions.csrf_ok(st.home, request.cookies.get(sessions.CSRF_COOKIE), form.get("csrf")):
        return again("the form's security token is missing or stale: sign in again", 403)
    token = (form.get("token") or "").strip()
    if token:
        try:
            p = st.verifier.verify(token)
            token, max_age = sessions.token_session(st.home, p, issuer=st.settings.issuer,
                                                    audience=st.settings.audience, role_claim=st.settings.role_claim)
        except TokenError as e:
            return again(f"that token was not accepted: {e}")
    else:
        name, password = (form.get("user") or "").strip(), form.get("password") or ""
        if not name or not password:
            return again("give a token, or a user name and password", 400)
        client = request.client.host if request.client else ""
        wait_s = THROTTLE.wait_s(name, client)
        if wait_s > 0:
            r = again(f"too many failed sign-ins: try again in {math.ceil(wait_s)} s", 429)
            r.headers["Retry-After"] = str(math.ceil(wait_s))
            return r
        role = await st.run(sessions.check_password, st.home, name, password)
        if role is None:
            THROTTLE.failed(name, client)
            return again("unknown user or wrong password")
        THROTTLE.succeeded(name, client)
        token, max_age = sessions.password_session(st.home, name, role, issuer=st.settings.issuer,
                                                   audience=st.settings.audience, role_claim=st.settings.role_claim)
    r = RedirectResponse(nxt, status_code=303)
    r.headers.append("set-cookie", sessions.cookie(sessions.SESSION_COOKIE, token, max_age=max_age,
                                                   secure=over_tls(request)))
    return r


THROTTLE = sessions.Throttle()


async def signout(request: Request) -> Response:
    st = state_of(request)
    try:
        form = await read_form(request, 64 * 1024)
        p = sessions.principal(st, request)
        if not sessions.csrf_ok(st.home, request.cookies.get(sessions.CSRF_COOKIE), form.get("csrf"),
                                sessions.session_id(p)):
            raise HTTPError(403, "the form's security token is missing or stale: reload the page and try again")
        if p is not None and p.jti is not None:  # the cookie stops working here and on every replica
            await st.run(lambda: (revoke_token(st.home, p.jti, p.expires), st.revocations.refresh()))
    except Exception as e:  # noqa: BLE001
        return error_page(request, e)
    r = RedirectResponse("/", status_code=303)
    r.headers.append("set-cookie", sessions.cookie(sessions.SESSION_COOKIE, "", max_age=0,
                                                   secure=over_tls(request)))
    return r


# -- detectors --------------------------------------------------------------------------------
def _overview(home) -> list:
    """One row per detector for the list page: the entity, its versions and last result."""
    rows = []
    for o in service.overview(home):
        last = o["last_result"]
        rows.append({"d": o["detector"], "versions": o["versions"], "threshold": o["threshold"], "last": last,
                     "rate": last["anomalies_detected"] / last["total_samples"] if last and last["total_samples"]
                     else None})
    return rows


# The list's columns that sort it: name -> the key of a row (None sorts last either way).
SORTS = {
    "name": lambda r: r["d"].name.lower(),
    "algorithm": lambda r: r["d"].algorithm.lower(),
    "versions": lambda r: r["versions"],
    "status": lambda r: r["d"].status.value,
    "threshold": lambda r: r["threshold"],
    "last": lambda r: r["last"]["created_at"] if r["last"] else None,
    "rate": lambda r: r["rate"],
}


def sort_and_filter(rows: list, q: str, status: str, sort: str, descending: bool) -> list:
    """The rows whose name or algorithm contains ``q`` (any case) and whose status is
    ``status`` (empty: any), ordered by column ``sort``; rows without a value go last."""
    q = q.strip().lower()
    kept = [r for r in rows if (not q or q in r["d"].name.lower() or q in r["d"].algorithm.lower())
            and (not status or r["d"].status.value == status)]
    key = SORTS.get(sort, SORTS["name"])
    have = sorted((r for r in kept if key(r) is not None), key=key, reverse=descending)
    return have + [r for r in kept if key(r) is None]


@page("read")
async def detectors(request, st: ServerState, p, form) -> Response:
    qp = request.query_params
    view = {"q": qp.get("q", "")[:100], "status": qp.get("status", ""), "sort": qp.get("sort", "name"),
            "desc": qp.get("dir") == "desc"}
    if view["sort"] not in SORTS:
        view["sort"] = "name"
    everything = await st.run(_overview, st.home)
    rows = sort_and_filter(everything, view["q"], view["status"], view["sort"], view["desc"])
    return render(request, "detectors.html", rows=rows, total=len(everything), view=view,
                  statuses=("active", "trained", "archived", "failed"), message=qp.get("done", "")[:200])


def _detector_view(home, name: str) -> dict:
    info = service.show(home, name)
    datasets = {}
    for v in info["versions"]:
        did = v.get("dataset_id")
        if did and did not in datasets:
            try:
                datasets[did] = service.dataset(home, did)
            except Exception:  # noqa: BLE001 - a forgotten dataset: shown by id only
                datasets[did] = None
    return {"info": info, "datasets": datasets}


@page("read")
async def detector(request, st: ServerState, p, form) -> Response:
    name = request.path_params["name"]
    view = await st.run(_detector_view, st.home, name)
    return render(request, "detector.html", name=name, **view, message=request.query_params.get("done", "")[:200])


_ACTIONS = {"activate": service.activate, "archive": service.archive}


@page("manage")
async def detector_action(request, st: ServerState, p, form) -> Response:
    name, action = request.path_params["name"], request.path_params["action"]
    if action == "delete":
        if form.get("confirm") != "yes":
            raise HTTPError(400, f"tick the box to confirm deleting {name!r} with its versions and results")
        n = await audited(request, p, "delete", name, lambda: st.run(service.delete, st.home, name))
        st.cache.invalidate(name)
        return RedirectResponse("/ui/detectors?done=" + quote(f"deleted {name} ({n} versions)"), status_code=303)
    fn = _ACTIONS.get(action)
    if fn is None:
        raise HTTPError(404, f"no action {action[:40]!r}")
    d = await audited(request, p, action, name, lambda: st.run(fn, st.home, name))
    st.cache.invalidate(name)
    return RedirectResponse(f"/ui/detectors/{quote(name)}?done=" + quote(f"{name} is now {d.status.value}"),
                            status_code=303)


# -- history ---------------------------------------------------------------------------------
@page("read")
async def history(request, st: ServerState, p, form) -> Response:
    name = request.path_params["name"]
    results = await st.run(service.results, st.home, name)
    rates = [r["anomalies_detected"] / r["total_samples"] if r["total_samples"] else 0.0 for r in results]
    chart = charts.time_scatter([epoch(r["created_at"]) for r in results], rates,
                                [r["total_samples"] for r in results])
    rows = [dict(r, rate=rate) for r, rate in zip(results, rates)][::-1]
    return render(request, "history.html", name=name, chart=chart, rows=rows)


# -- detect -----------------------------------------------------------------------------------
def _stored_datasets(home) -> list:
    return [d for d in service.list_datasets(home) if d.get("stored")][::-1]


@page("detect")
async def detect_page(request, st: ServerState, p, form) -> Response:
    dets, datasets = await st.run(lambda: ([d for d in service.list_detectors(st.home) if d.can_detect()],
                                           _stored_datasets(st.home)))
    chosen = request.query_params.get("detector", "")
    return render(request, "detect.html", detectors=dets, datasets=datasets, chosen=chosen, values={},
                  max_mb=st.settings.max_body_bytes / 2 ** 20)


def _number(form, field: str, label: str) -> Optional[float]:
    text = (form.get(field) or "").strip()
    if not text:
        return None
    try:
        v = float(text)
    except ValueError:
        raise HTTPError(400, f"{label} must be a number, got {text[:40]!r}") from None
    if not math.isfinite(v):
        raise HTTPError(400, f"{label} must be a finite number")
    return v


@page("detect")
async def detect(request, st: ServerState, p, form) -> Response:
    values = {k: form.get(k) or "" for k in ("detector", "dataset_id", "contamination", "threshold")}
    try:
        name = values["detector"].strip()
        if not name:
            raise HTTPError(400, "choose a detector")
        threshold = _number(form, "threshold", "the threshold")
        contamination = _number(form, "contamination", "the contamination")
        if threshold is not None and contamination is not None:
            raise HTTPError(400, "give a threshold or a contamination, not both")
        if contamination is not None and not 0 < contamination <= 0.5:
            raise HTTPError(400, "the contamination is a share of rows: more than 0, at most 0.5")
        scorer = await st.plane.scorer(name, None)
        upload = form.get("file")
        filename = getattr(upload, "filename", None) if upload is not None and not isinstance(upload, str) else None
        dataset_id = values["dataset_id"].strip() or None
        if filename:
            data = await upload.read()
            suffix = check_upload(filename, data)
            shown = Path(filename).name[:120]

            def store() -> tuple:
                with upload_file(data, suffix, st.settings) as tmp:
                    X, names = read_upload(tmp, shown, scorer)  # every check before anything is stored
                    known = {d["id"] for d in service.list_datasets(st.home)}
                    did = service.store_dataset(st.home, tmp, name=shown)["id"]
                ROWS.put(did, X, names)
                return did, did not in known

            dataset_id, new = await audited(request, p, "dataset.store", shown, lambda: st.run(store))
        elif dataset_id is None:
            raise HTTPError(400, "choose a file to upload or a stored dataset")
        else:
            new = False

        def run():
            try:
                return service.detect(st.home, name, None, version=scorer.version.version, threshold=threshold,
                                      contamination=contamination, save=True, dataset_id=dataset_id, scorer=scorer)
            except BaseException:
                if new:  # an upload kept only for a detection that failed is not kept
                    service.delete_dataset(st.home, dataset_id)
                raise

        result = await audited(request, p, "detect", f"{name}@{scorer.version.version}", lambda: st.run(run),
                               lambda r: {"result": r.id, "rows": int(r.scores.shape[0]), "page": True})
        st.cache.used(name, scorer.version.version, 1, time.monotonic())
        return RedirectResponse(f"/ui/results/{result.id}", status_code=303)
    except (HTTPError, ValueError, PynomalyError, DetectorUnavailable) as e:  # the form again, with the reason
        status, message, _ = status_of(e)
        dets, datasets = await st.run(lambda: ([d for d in service.list_detectors(st.home) if d.can_detect()],
                                               _stored_datasets(st.home)))
        return render(request, "detect.html", status, detectors=dets, datasets=datasets, chosen=values["detector"],
                      values=values, error=message, max_mb=st.settings.max_body_bytes / 2 ** 20)


# -- results ----------------------------------------------------------------------------------
def _detector_name(home, detector_id: str) -> Optional[str]:
    return next((d.name for d in service.list_detectors(home) if d.id == detector_id), None)


def _result_view(home, result_id: str, selected: Optional[int] = None) -> dict:
    r = service.result(home, result_id)
    name = _detector_name(home, r.detector_id)
    scores = r.scores
    n = scores.size
    k = int(np.count_nonzero(r.labels))
    view = {"r": r, "name": name, "n": n, "flagged": k, "features": None, "top": [], "dataset": None}
    why.kept(view, r, TOP_ROWS)
    if n == 0:
        return view
    view["histogram"] = charts.histogram(scores, r.threshold)
    stops, above = charts.threshold_stops(scores, r.threshold)
    view["stops"] = json.dumps({"t": stops.tolist(), "above": above.tolist(), "n": int(n),
                                "threshold": float(r.threshold)})
    view["start"] = int(np.searchsorted(stops, r.threshold))
    view["steps"] = int(stops.size - 1)
    top = np.argpartition(-scores, TOP_ROWS - 1)[:TOP_ROWS] if n > TOP_ROWS else np.arange(n)
    top = top[np.lexsort((top, -scores[top]))]  # highest score first, ties by row
    X = names = None
    if r.dataset_id:
        try:
            view["dataset"] = service.dataset(home, r.dataset_id)
            X, names = ROWS.rows(home, r.dataset_id)
        except Exception:  # noqa: BLE001 - rows not kept (scored from a file): scores only
            X = None
    if X is not None and X.shape[0] == n:
        versions = {v["version"]: v for v in service.versions(home, name)} if name else {}
        want = (versions.get(r.detector_version) or {}).get("feature_names")
        if want and set(want) <= set(names) and list(want) != names:
            X = X[:, [names.index(c) for c in want]]
            names = list(want)
        mean, std = X.mean(axis=0), X.std(axis=0)
        std[std == 0] = np.inf
        rows = X[top]
        z = (rows - mean) / std
        view["features"] = names
        view["top"] = [{"index": int(i), "score": float(scores[i]), "flagged": bool(r.labels[i]),
                        "cells": [(float(v), float(zz)) for v, zz in zip(rows[j], z[j])]}
                       for j, i in enumerate(top)]
        if selected is not None and not 0 <= selected < n:
            raise HTTPError(400, f"row {selected} is not in this result: its rows are 0 to {n - 1}")
        if name:
            why.add(view, home, name, r.detector_version, X, selected)
    else:
        view["top"] = [{"index": int(i), "score": float(scores[i]), "flagged": bool(r.labels[i]), "cells": []}
                       for i in top]
    return view


@page("read")
async def result_page(request, st: ServerState, p, form) -> Response:
    row = request.query_params.get("row")
    if row is not None and not row.isdigit():
        raise HTTPError(400, f"row must be a row number (0, 1, ...), got {row[:20]!r}")
    view = await st.run(_result_view, st.home, request.path_params["result_id"], None if row is None else int(row))
    return render(request, "result.html", parquet=_has_parquet(), **view)


def _has_parquet() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


@page("read")
async def download(request, st: ServerState, p, form) -> Response:
    """The result as CSV or Parquet: ``sample_index, score, label``; with ``?threshold=`` the
    labels follow that threshold by the detector's own rule (the Scorer's), no rescoring."""
    rid = request.path_params["result_id"]
    fmt = request.query_params.get("format", "csv")
    if fmt not in ("csv", "parquet"):
        raise HTTPError(400, "format must be csv or parquet")
    r, name = await st.run(lambda: (lambda res: (res, _detector_name(st.home, res.detector_id)))(
        service.result(st.home, rid)))
    threshold = _number(request.query_params, "threshold", "the threshold")
    labels = r.labels.astype(bool)
    if threshold is not None and threshold != r.threshold:
        if name is None:
            raise HTTPError(409, "this result's detector was deleted: download it with its own threshold")
        scorer = await st.plane.scorer(name, r.detector_version)
        labels = scorer.labels(r.scores, threshold)
    idx = np.arange(r.scores.size)
    if fmt == "csv":
        def write() -> bytes:
            buf = io.StringIO()
            buf.write("sample_index,score,label\n")
            lab = labels.astype(np.int8)
            buf.writelines(f"{i},{s!r},{l}\n" for i, s, l in zip(idx.tolist(), r.scores.tolist(), lab.tolist()))
            return buf.getvalue().encode()

        body, media = await st.run(write), "text/csv"
    else:
        if not _has_parquet():
            raise HTTPError(415, "Parquet needs pyarrow on the server (pip install 'pynomaly[parquet]'); take CSV")

        def write() -> bytes:
            import pyarrow as pa
            import pyarrow.parquet as pq

            buf = io.BytesIO()
            pq.write_table(pa.table({"sample_index": idx, "score": r.scores, "label": labels.astype(np.int8)}), buf)
            return buf.getvalue()

        body, media = await st.run(write), "application/vnd.apache.parquet"
    return Response(body, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="result-{rid[:32]}.{fmt}"', "Cache-Control": "no-store"})


# -- train ------------------------------------------------------------------------------------
def _params(text: str) -> dict:
    """``key=value`` lines (values read as JSON when they can be: numbers, true, null, lists)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise HTTPError(400, f"parameters are one key=value per line; {line[:60]!r} is not")
        too_deep = HTTPError(400, f"parameter {key.strip()}: {tensors.too_deep_message()}")
        try:
            v = json.loads(value.strip())
        except ValueError:
            v = value.strip()
        except RecursionError:
            raise too_deep from None
        if isinstance(v, (dict, list)) and tensors.nested_too_deep(v):
            raise too_deep
        out[key.strip()] = v
    return out


@page("train")
async def train_page(request, st: ServerState, p, form) -> Response:
    datasets = await st.run(_stored_datasets, st.home)
    return render(request, "train.html", datasets=datasets, algorithms=ALGORITHMS,
                  values={"name": request.query_params.get("name", ""), "algorithm": "IsolationForest",
                          "params": "", "dataset_id": ""}, max_mb=st.settings.max_body_bytes / 2 ** 20)


@page("train")
async def train(request, st: ServerState, p, form) -> Response:
    values = {k: form.get(k) or "" for k in ("name", "algorithm", "params", "dataset_id")}
    try:
        from pynomaly.domain import check_name

        name = check_name(values["name"].strip())
        algorithm = values["algorithm"].strip() or "IsolationForest"
        params = _params(values["params"])
        await st.run(JOBS.check, algorithm, params)  # before an upload is stored for it
        dataset_id = values["dataset_id"].strip() or None
        upload = form.get("file")
        filename = getattr(upload, "filename", None) if upload is not None and not isinstance(upload, str) else None
        if filename:
            data = await upload.read()
            suffix = check_upload(filename, data)
            shown = Path(filename).name[:120]

            def store() -> str:
                with upload_file(data, suffix, st.settings) as tmp:
                    try:
                        return service.store_dataset(st.home, tmp, name=shown)["id"]
                    except ValueError as e:
                        raise HTTPError(400, str(e).replace(Path(tmp).name, shown).replace(" (--columns)", "")) from None

            dataset_id = await audited(request, p, "dataset.store", shown, lambda: st.run(store))
        elif dataset_id is None:
            raise HTTPError(400, "choose a stored dataset or upload a file to train on")
        await st.run(service.dataset, st.home, dataset_id)  # an unknown id is refused here, not in the job
    except (HTTPError, ValueError, PynomalyError) as e:
        status, message, _ = status_of(e)
        datasets = await st.run(_stored_datasets, st.home)
        return render(request, "train.html", status, datasets=datasets, algorithms=ALGORITHMS, values=values,
                      error=message, max_mb=st.settings.max_body_bytes / 2 ** 20)
    audit = {"actor": actor_of(p), "origin": origin_of(request.client)}
    jid = await st.run(lambda: JOBS.start(st, name, audit, algorithm=algorithm, params=params, dataset_id=dataset_id,
                                          activate=form.get("activate") == "yes"))
    return RedirectResponse(f"/ui/train/{jid}", status_code=303)


def _trained(home, result: dict) -> dict:
    """What the training-done page shows of the version a job made: its metadata and the
    histogram of the scores it gave its training rows, with its threshold."""
    name, version = result["detector"], result["version"]
    v = next((x for x in service.versions(home, name) if x["version"] == version), None)
    scores = service.training_scores(home, name, version)
    chart = charts.histogram(scores, v["threshold"]) if v is not None and scores is not None else None
    return {"version": v, "histogram": chart, "n_scores": 0 if scores is None else int(scores.size)}


@page("train")
async def train_job(request, st: ServerState, p, form) -> Response:
    job = await st.run(JOBS.get, st.home, request.path_params["job_id"])
    if job is None:
        raise HTTPError(404, "no such training run (runs are kept for a week)")
    elapsed = (job["finished"] or time.time()) - job["started"]
    trained = None
    if job["state"] == "succeeded" and job["result"]:
        try:
            trained = await st.run(_trained, st.home, job["result"])
        except PynomalyError:  # deleted since, or unreadable: the page says it was trained, and links
            trained = None
    return render(request, "train_job.html", job=job, elapsed=elapsed, trained=trained)
