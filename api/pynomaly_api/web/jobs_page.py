"""The jobs page: the home's queue (training and detection jobs, whoever submitted them:
pages, API, ``pynomaly train --background``), with the progress of running ones kept live by
a small script that asks for the page again, the error of a failed one, and cancelling.
Cancelling is a POST with the form's CSRF token, allowed to whoever may run such a job (as
``POST /api/v1/jobs/{id}/cancel``), and recorded in the audit trail."""

from __future__ import annotations

import time
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response

from pynomaly.service import jobs

from ..detection import audited
from ..errors import HTTPError
from ..state import ServerState
from ..tokens import ForbiddenError
from .render import epoch, page, render

JOB_ACTIONS = {"train": "train", "detect": "detect"}  # the role a job of each kind needs (as the API's)
SHOWN = 100


def _view(j: dict) -> dict:
    started, finished = epoch(j["started_at"]), epoch(j["finished_at"])
    return dict(j, target=j["params"].get("detector", ""), live=j["state"] in ("queued", "running"),
                took=None if started is None else (finished or time.time()) - started)


@page("read")
async def jobs_page(request, st: ServerState, p, form) -> Response:
    state = request.query_params.get("state") or None
    rows = [_view(j) for j in await st.run(lambda: jobs.list_jobs(str(st.home), state=state, limit=SHOWN))]
    counts = await st.run(jobs.counts, str(st.home))
    return render(request, "jobs.html", rows=rows, counts=counts, state=state or "", actions=JOB_ACTIONS,
                  live=any(r["live"] for r in rows), message=request.query_params.get("done", "")[:200])


@page("read")
async def cancel(request, st: ServerState, p, form) -> Response:
    job = await st.run(jobs.get, str(st.home), request.path_params["job_id"])
    action = JOB_ACTIONS.get(job["kind"], "manage")
    if not p.may(action):  # whoever may run such a job may cancel it; a refusal is recorded as the API's are
        e = ForbiddenError(f"role {p.role!r} may not cancel a {job['kind']} job (needs the role that may "
                           f"{action})")
        st.audit.refused(request.client, p.subject, 403, str(e), request.url.path)
        raise e
    if job["state"] in ("succeeded", "failed", "cancelled"):
        raise HTTPError(409, f"job {job['id'][:8]} is already {job['state']}")
    await audited(request, p, "job.cancel", job["id"], lambda: st.run(jobs.cancel, str(st.home), job["id"]))
    return RedirectResponse("/ui/jobs?done=" + quote(f"cancelled job {job['id'][:8]} ({job['kind']} "
                                                     f"{job['params'].get('detector', '')})"), status_code=303)
