"""The web pages: plain Starlette routes rendering Jinja2 templates over the service layer.

Every page checks its caller with the API's roles (a session cookie holding an API token,
see :mod:`pynomaly_api.sessions`) and every form its CSRF token; detection uses the server's
cached :class:`~pynomaly.service.Scorer`, as the API does. Failures become a page with a
readable message and the status the API would answer (no traceback, ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Optional
from urllib.parse import quote

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from pynomaly import PynomalyError, service
from pynomaly.serving import DetectorUnavailable

from .. import sessions
from ..app import HTTPError, ServerState, state_of, status_of
from ..tokens import Principal, TokenError
from . import charts

log = logging.getLogger("pynomaly_api.web")

HERE = Path(__file__).parent
_env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
_env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.2f}%"
_env.filters["num"] = lambda v: "–" if v is None else (f"{v:.6g}" if isinstance(v, float) else f"{v:,}")
_env.filters["when"] = lambda s: "–" if not s else str(s)[:19].replace("T", " ")

TOP_ROWS = 20  # rows in a result's table of top anomalies
UPLOAD_SUFFIXES = (".csv", ".tsv", ".npy", ".npz", ".parquet")
ALGORITHMS = ("IsolationForest", "LOF", "KNN", "pyod.ECOD", "pyod.IForest", "TorchAutoEncoder", "JaxDeepSVDD")


# -- rendering --------------------------------------------------------------------------------
def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def render(request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
    """The page ``template`` with what every page shows (who is signed in, the CSRF token)."""
    st = state_of(request)
    nonce = request.cookies.get(sessions.CSRF_COOKIE)
    fresh = not nonce
    if fresh:
        nonce = sessions.new_nonce()
    p: Optional[Principal] = getattr(request.state, "principal", None)
    body = _env.get_template(template).render(
        user=p, may=(p.may if p is not None else (lambda action: False)), auth=st.verifier is not None,
        csrf=sessions.csrf_token(st.home, nonce), path=request.url.path, **ctx)
    r = HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})
    if fresh:
        r.headers.append("set-cookie", sessions.cookie(sessions.CSRF_COOKIE, nonce, max_age=30 * 86400,
                                                       secure=_secure(request)))
    r.headers["X-Frame-Options"] = "DENY"
    r.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                            "script-src 'self'; form-action 'self'; frame-ancestors 'none'")
    return r


def error_page(request: Request, err: BaseException) -> Response:
    status, message, _ = status_of(err)
    if isinstance(err, TokenError) or status == 401:
        return _to_signin(request, expired=True)
    titles = {400: "That did not work", 403: "Not allowed", 404: "Not found", 409: "Not possible now",
              413: "Too large", 415: "Not a file this page reads"}
    return render(request, "error.html", status, title=titles.get(status, "Something went wrong"), message=message)


# What the sign-in page may say when sent there (a code in the URL, never the text: a link
# from elsewhere cannot make the page say anything else).
_WHY = {"expired": "your session has ended or is no longer valid; sign in again"}


def _to_signin(request: Request, expired: bool = False) -> Response:
    target = "/?next=" + quote(request.url.path, safe="/")
    if expired:
        target += "&why=expired"
    return RedirectResponse(target, status_code=303)


def _safe_next(url: Optional[str]) -> str:
    """Where to go after signing in: a path on this server only (no open redirect)."""
    if url and url.startswith("/ui/") and "//" not in url and "\\" not in url:
        return url
    return "/ui/detectors"


async def read_form(request: Request, limit: int):
    """The form of a POST, its body at most ``limit`` bytes. A body declared larger is read
    and dropped before answering, so that the browser sees the page that says so (a browser
    still sending a file does not show an answer cut short)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        from ..app import deadline

        drained = 0
        with contextlib.suppress(asyncio.TimeoutError):  # not forever, nor without end
            async with deadline(min(30.0, state_of(request).settings.request_timeout_s)):
                async for chunk in request.stream():
                    drained += len(chunk)
                    if drained > 4 * limit + (64 << 20):
                        break
        raise HTTPError(413, f"the upload is {int(length) / 2**20:.1f} MB; this server accepts at most "
                        f"{limit / 2**20:.1f} MB per request (pynomaly api --max-body)")
    from ..app import read_body

    body = await read_body(request, limit)
    request._body = body  # parse what was read within the limit
    try:
        return await request.form(max_files=1, max_fields=20, max_part_size=64 * 1024)
    except Exception as e:  # noqa: BLE001 - a malformed form is the sender's error
        raise HTTPError(400, f"the form could not be read: {getattr(e, 'detail', None) or e}") from None


def page(action: Optional[str] = None):
    """A page handler for callers whose role may ``action`` (None: anyone signed in); POSTs
    must carry the form's CSRF token. The handler gets ``(request, state, principal, form)``."""

    def wrap(fn):
        @functools.wraps(fn)
        async def handler(request: Request) -> Response:
            st = state_of(request)
            try:
                p = sessions.principal(st, request)
                if p is None:
                    return _to_signin(request, expired=request.cookies.get(sessions.SESSION_COOKIE) is not None)
                request.state.principal = p
                form = None
                if request.method == "POST":
                    form = await read_form(request, st.settings.max_body_bytes)
                    if not sessions.csrf_ok(st.home, request.cookies.get(sessions.CSRF_COOKIE), form.get("csrf")):
                        raise HTTPError(403, "the form's security token is missing or stale: reload the page and "
                                        "try again")
                if action is not None:
                    p.require(action)
                try:
                    return await fn(request, st, p, form)
                finally:
                    if form is not None:
                        await form.close()
            except Exception as e:  # noqa: BLE001 - every failure is a page, never a trace
                return error_page(request, e)

        return handler

    return wrap


# -- signing in -------------------------------------------------------------------------------
async def signin_page(request: Request) -> Response:
    st = state_of(request)
    p = sessions.principal(st, request)
    nxt = _safe_next(request.query_params.get("next"))
    if p is not None:
        return RedirectResponse(nxt, status_code=303)
    return render(request, "signin.html", 200, next=nxt, why=_WHY.get(request.query_params.get("why", ""), ""))


async def signin(request: Request) -> Response:
    st = state_of(request)
    try:
        form = await read_form(request, 64 * 1024)
    except Exception as e:  # noqa: BLE001
        return error_page(request, e)
    nxt = _safe_next(form.get("next"))
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
        except TokenError as e:
            return again(f"that token was not accepted: {e}")
        max_age = sessions.session_lifetime(p)
    else:
        name, password = (form.get("user") or "").strip(), form.get("password") or ""
        if not name or not password:
            return again("give a token, or a user name and password", 400)
        wait_s = THROTTLE.wait_s(name)
        if wait_s > 0:
            return again(f"too many failed sign-ins for {name!r}: try again in {math.ceil(wait_s)} s", 429)
        role = await st.run(sessions.check_password, st.home, name, password)
        if role is None:
            THROTTLE.failed(name)
            return again("unknown user or wrong password")
        THROTTLE.succeeded(name)
        token, max_age = sessions.password_session(st.home, name, role, issuer=st.settings.issuer,
                                                   audience=st.settings.audience)
    r = RedirectResponse(nxt, status_code=303)
    r.headers.append("set-cookie", sessions.cookie(sessions.SESSION_COOKIE, token, max_age=max_age,
                                                   secure=_secure(request)))
    return r


THROTTLE = sessions.Throttle()


async def signout(request: Request) -> Response:
    st = state_of(request)
    try:
        form = await read_form(request, 64 * 1024)
        if not sessions.csrf_ok(st.home, request.cookies.get(sessions.CSRF_COOKIE), form.get("csrf")):
            raise HTTPError(403, "the form's security token is missing or stale: reload the page and try again")
    except Exception as e:  # noqa: BLE001
        return error_page(request, e)
    r = RedirectResponse("/", status_code=303)
    r.headers.append("set-cookie", sessions.cookie(sessions.SESSION_COOKIE, "", max_age=0, secure=_secure(request)))
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


@page("read")
async def detectors(request, st: ServerState, p, form) -> Response:
    rows = await st.run(_overview, st.home)
    return render(request, "detectors.html", rows=rows, message=request.query_params.get("done", "")[:200])


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
        n = await st.run(service.delete, st.home, name)
        st.cache.invalidate(name)
        return RedirectResponse("/ui/detectors?done=" + quote(f"deleted {name} ({n} versions)"), status_code=303)
    fn = _ACTIONS.get(action)
    if fn is None:
        raise HTTPError(404, f"no action {action[:40]!r}")
    d = await st.run(fn, st.home, name)
    st.cache.invalidate(name)
    return RedirectResponse(f"/ui/detectors/{quote(name)}?done=" + quote(f"{name} is now {d.status.value}"),
                            status_code=303)


# -- history ----------------------------------------------------------------------------------
@page("read")
async def history(request, st: ServerState, p, form) -> Response:
    name = request.path_params["name"]
    results = await st.run(service.results, st.home, name)
    rates = [r["anomalies_detected"] / r["total_samples"] if r["total_samples"] else 0.0 for r in results]
    chart = charts.line_chart([r["created_at"] for r in results], rates)
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


_MAGIC = {".npy": (b"\x93NUMPY", "a NumPy .npy file"), ".npz": (b"PK", "a NumPy .npz (zip) file"),
          ".parquet": (b"PAR1", "a Parquet file")}


def check_upload(filename: str, data: bytes) -> str:
    """The upload's suffix, once its name and first bytes agree on what it is; HTTPError otherwise."""
    shown = Path(filename).name[:80]
    suffix = Path(filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise HTTPError(415, f"{shown!r} is not a file this page reads: upload a .csv, .tsv, .npy, .npz or "
                        ".parquet file")
    if not data:
        raise HTTPError(400, f"{shown!r} is empty")
    magic = _MAGIC.get(suffix)
    if magic is not None and not data.startswith(magic[0]):
        raise HTTPError(415, f"{shown!r} is not {magic[1]}, whatever its name says")
    if magic is None:
        head = data[:65536]
        try:
            if b"\x00" in head:
                raise UnicodeDecodeError("utf-8", head, 0, 1, "NUL byte")
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not merely a character cut at the 64 KB mark
                raise HTTPError(415, f"{shown!r} is not a text table (CSV), whatever its name says") from None
    return suffix


def _read_upload(path: str, shown: str, scorer) -> tuple:
    """``(X, names)`` of an uploaded file, every column, once checked against the detector's
    features (nothing stored)."""
    try:
        X, names, _ = service.load_data(path)
    except ValueError as e:  # InvalidInputError and the readers' own (pyarrow's are ValueErrors)
        # The readers' messages name the temporary file and the CLI's option: this page names neither.
        raise HTTPError(400, str(e).replace(Path(path).name, shown).replace(" (--columns)", "")) from None
    except Exception as e:  # noqa: BLE001 - a file the readers choke on is still the uploader's
        log.info("unreadable upload %s: %r", shown, e)
        raise HTTPError(400, f"{shown!r} could not be read ({type(e).__name__}): is it really what its name says?") from None
    v = scorer.version
    want = list(v.feature_names) if v.feature_names else None
    n = len(want) if want and set(want) <= set(names) else X.shape[1]
    if n != v.n_features:
        expected = f" ({', '.join(want[:12])}{', ...' if len(want) > 12 else ''})" if want else ""
        raise HTTPError(400, f"{shown!r} has {X.shape[1]} column(s) ({', '.join(names[:12])}"
                        f"{', ...' if len(names) > 12 else ''}); detector {v.name!r} needs {v.n_features}{expected}")
    return X, names


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
        scorer = await st.scorer(name, None)
        upload = form.get("file")
        filename = getattr(upload, "filename", None) if upload is not None and not isinstance(upload, str) else None
        dataset_id = values["dataset_id"].strip() or None
        if filename:
            data = await upload.read()
            suffix = check_upload(filename, data)
            shown = Path(filename).name[:120]

            def store() -> tuple:
                fd, tmp = tempfile.mkstemp(prefix="pynomaly-web-", suffix=suffix)
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    X, names = _read_upload(tmp, shown, scorer)  # every check before anything is stored
                    known = {d["id"] for d in service.list_datasets(st.home)}
                    did = service.store_dataset(st.home, tmp, name=shown)["id"]
                    ROWS.put(did, X, names)
                    return did, did not in known
                finally:
                    os.unlink(tmp)

            dataset_id, new = await st.run(store)
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

        result = await st.run(run)
        st.cache.used(name, scorer.version.version, 1, time.monotonic())
        return RedirectResponse(f"/ui/results/{result.id}", status_code=303)
    except (HTTPError, ValueError, PynomalyError, DetectorUnavailable) as e:  # the form again, with the reason
        status, message, _ = status_of(e)
        dets, datasets = await st.run(lambda: ([d for d in service.list_detectors(st.home) if d.can_detect()],
                                               _stored_datasets(st.home)))
        return render(request, "detect.html", status, detectors=dets, datasets=datasets, chosen=values["detector"],
                      values=values, error=message, max_mb=st.settings.max_body_bytes / 2 ** 20)


# -- results ----------------------------------------------------------------------------------
class RowsCache:
    """Rows of recently used stored datasets, so that a result page shows its top rows'
    features without reading the whole dataset again (a 100k x 21 dataset takes ~60 ms to
    read back: decompression and the artifact's hash check). A dataset id always names the
    same rows; a deleted dataset is not shown from here (its metadata is looked up first).
    An upload is put here when stored, so its result page is quick the first time too."""

    def __init__(self, max_bytes: int = 256 * 2 ** 20):
        self.max_bytes = max_bytes
        self._items: "OrderedDict[str, tuple]" = OrderedDict()
        self._lock = threading.Lock()

    def put(self, dataset_id: str, X: np.ndarray, names: list) -> None:
        if X.nbytes > self.max_bytes:
            return
        with self._lock:
            self._items[dataset_id] = (X, list(names))
            self._items.move_to_end(dataset_id)
            while sum(x.nbytes for x, _ in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)

    def rows(self, home, dataset_id: str) -> tuple:
        """``(X, names)`` of a stored dataset; DatasetNotFoundError when it is gone."""
        service.dataset(home, dataset_id)
        with self._lock:
            hit = self._items.get(dataset_id)
            if hit is not None:
                self._items.move_to_end(dataset_id)
                return hit
        X, names = service.dataset_rows(home, dataset_id)
        self.put(dataset_id, X, names)
        return X, names


ROWS = RowsCache()


def _detector_name(home, detector_id: str) -> Optional[str]:
    return next((d.name for d in service.list_detectors(home) if d.id == detector_id), None)


def _result_view(home, result_id: str) -> dict:
    r = service.result(home, result_id)
    name = _detector_name(home, r.detector_id)
    scores = r.scores
    n = scores.size
    k = int(np.count_nonzero(r.labels))
    view = {"r": r, "name": name, "n": n, "flagged": k, "features": None, "top": [], "dataset": None}
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
    else:
        view["top"] = [{"index": int(i), "score": float(scores[i]), "flagged": bool(r.labels[i]), "cells": []}
                       for i in top]
    return view


@page("read")
async def result_page(request, st: ServerState, p, form) -> Response:
    view = await st.run(_result_view, st.home, request.path_params["result_id"])
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
        scorer = await st.scorer(name, r.detector_version)
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
class Jobs:
    """Training runs started from the pages, with their progress, kept as small JSON files in
    the home (``web-jobs/``) so that every worker process of the server can show any run
    (background jobs with their own API come in a later issue). Files older than a week go."""

    FOLDER = "web-jobs"
    KEEP_S = 7 * 86400

    def __init__(self):
        self._running: set = set()

    def _path(self, home, jid: str) -> Path:
        return Path(home) / self.FOLDER / f"{jid}.json"

    def _write(self, home, job: dict) -> None:
        from pynomaly._files import atomic_write

        atomic_write(self._path(home, job["id"]), json.dumps(job).encode(), mode=0o600)

    def get(self, home, jid: str) -> Optional[dict]:
        if not jid.isalnum() or len(jid) > 64:
            return None
        try:
            return json.loads(self._path(home, jid).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _forget_old(self, home) -> None:
        now = time.time()
        for f in (Path(home) / self.FOLDER).glob("*.json"):
            with contextlib.suppress(OSError):
                if now - f.stat().st_mtime > self.KEEP_S:
                    f.unlink()

    def start(self, st: ServerState, name: str, **kwargs) -> str:
        jid = uuid.uuid4().hex
        job = {"id": jid, "name": name, "stage": "queued", "fraction": None, "done": False, "error": None,
               "started": time.time(), "finished": None}
        (Path(st.home) / self.FOLDER).mkdir(mode=0o700, exist_ok=True)
        self._forget_old(st.home)
        self._write(st.home, job)
        last = [0.0]

        def progress(stage, fraction=None):
            job["stage"], job["fraction"] = stage, fraction
            now = time.monotonic()
            if now - last[0] > 0.25:  # a page reloads each second: a few writes a second are plenty
                last[0] = now
                self._write(st.home, job)

        def run():
            try:
                service.train(st.home, name, None, progress=progress, **kwargs)
                job["stage"] = "done"
            except Exception as e:  # noqa: BLE001 - shown on the run's page
                job["error"] = status_of(e)[1]
            finally:  # the new version is served within the cache's refresh interval, as after the API's train
                job["done"], job["finished"] = True, time.time()
                self._write(st.home, job)

        future = st.run(run)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return jid


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
        try:
            out[key.strip()] = json.loads(value.strip())
        except ValueError:
            out[key.strip()] = value.strip()
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
        dataset_id = values["dataset_id"].strip() or None
        upload = form.get("file")
        filename = getattr(upload, "filename", None) if upload is not None and not isinstance(upload, str) else None
        if filename:
            data = await upload.read()
            suffix = check_upload(filename, data)
            shown = Path(filename).name[:120]

            def store() -> str:
                fd, tmp = tempfile.mkstemp(prefix="pynomaly-web-", suffix=suffix)
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    try:
                        return service.store_dataset(st.home, tmp, name=shown)["id"]
                    except ValueError as e:
                        raise HTTPError(400, str(e).replace(Path(tmp).name, shown).replace(" (--columns)", "")) from None
                finally:
                    os.unlink(tmp)

            dataset_id = await st.run(store)
        elif dataset_id is None:
            raise HTTPError(400, "choose a stored dataset or upload a file to train on")
        await st.run(service.dataset, st.home, dataset_id)  # an unknown id is refused here, not in the job
    except (HTTPError, ValueError, PynomalyError) as e:
        status, message, _ = status_of(e)
        datasets = await st.run(_stored_datasets, st.home)
        return render(request, "train.html", status, datasets=datasets, algorithms=ALGORITHMS, values=values,
                      error=message, max_mb=st.settings.max_body_bytes / 2 ** 20)
    jid = JOBS.start(st, name, algorithm=algorithm, params=params, dataset_id=dataset_id,
                     activate=form.get("activate") == "yes")
    return RedirectResponse(f"/ui/train/{jid}", status_code=303)


@page("train")
async def train_job(request, st: ServerState, p, form) -> Response:
    job = await st.run(JOBS.get, st.home, request.path_params["job_id"])
    if job is None:
        raise HTTPError(404, "no such training run (runs are kept for a week)")
    elapsed = (job["finished"] or time.time()) - job["started"]
    return render(request, "train_job.html", job=job, elapsed=elapsed)


JOBS = Jobs()


# -- health -----------------------------------------------------------------------------------
STARTED = time.time()


def _daemon_status() -> dict:
    from pynomaly import wire
    from pynomaly.client import Client

    path = wire.default_socket_path()
    if not os.path.exists(path):
        return {"running": False, "path": path, "why": "no socket there (start it with `pynomaly serve`)"}
    try:
        with Client(path, timeout=2.0) as c:
            h, s = c.health(), c.stats()
        return {"running": True, "path": path, "status": h.status, "version": h.version, "pid": h.pid,
                "uptime_s": h.uptime_s, "stats": {k: getattr(s, k) for k in s.__struct_fields__
                                                  if k not in ("id", "requests", "errors")},
                "requests": dict(s.requests), "errors": dict(s.errors)}
    except Exception as e:  # noqa: BLE001 - shown as the daemon's state
        return {"running": False, "path": path, "why": f"{type(e).__name__}: {e}"[:300]}


@page("read")
async def health(request, st: ServerState, p, form) -> Response:
    from pynomaly import __version__

    daemon = await st.run(_daemon_status)
    n_detectors = len(await st.run(service.list_detectors, st.home))
    cache = st.cache
    api = {"ready": st.ready, "version": __version__, "pid": os.getpid(), "uptime_s": time.time() - STARTED,
           "home": str(st.home), "detectors": n_detectors, "authentication": st.verifier is not None,
           "max_body_mb": st.settings.max_body_bytes / 2 ** 20, "counters": dict(cache.counters),
           "cached_detectors": len(cache), "cache_mb": cache.size / 2 ** 20}
    return render(request, "health.html", api=api, daemon=daemon)

