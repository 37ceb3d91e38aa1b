"""The datasets page: every dataset the home knows (uploads, and the data detectors were
trained on), a look at one (its first rows and a summary of each column) and, for admins,
deleting one. Deleting is a POST with the form's CSRF token, recorded in the audit trail."""

from __future__ import annotations

import threading
from collections import OrderedDict
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response

from pynomaly import service

from ..detection import audited
from ..errors import HTTPError
from ..state import ServerState
from .render import page, render

PREVIEW_ROWS = 10


@page("read")
async def datasets(request, st: ServerState, p, form) -> Response:
    rows = await st.run(service.datasets_overview, st.home)
    return render(request, "datasets.html", rows=rows, message=request.query_params.get("done", "")[:200])


class Previews:
    """Previews of recently viewed datasets. A dataset id always names the same rows, so a
    preview stays true as long as the dataset exists (asked of the home on every view): the
    second view of a 100k-row dataset does not read and summarise its rows again."""

    def __init__(self, size: int = 32):
        self.size = size
        self._items: "OrderedDict[str, dict]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, home, dataset_id: str) -> dict:
        meta = service.dataset(home, dataset_id)  # a deleted dataset is not shown from here
        with self._lock:
            hit = self._items.get(dataset_id)
            if hit is not None:
                self._items.move_to_end(dataset_id)
                return dict(hit, meta=meta)
        view = service.dataset_preview(home, dataset_id, PREVIEW_ROWS)
        with self._lock:
            self._items[dataset_id] = view
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return view


PREVIEWS = Previews()


@page("read")
async def dataset(request, st: ServerState, p, form) -> Response:
    view = await st.run(PREVIEWS.get, st.home, request.path_params["dataset_id"])
    return render(request, "dataset.html", **view, preview_rows=PREVIEW_ROWS)


@page("manage")
async def delete(request, st: ServerState, p, form) -> Response:
    did = request.path_params["dataset_id"]
    meta = await st.run(service.dataset, st.home, did)  # an unknown id: 404 before anything
    if form.get("confirm") != "yes":
        raise HTTPError(400, f"tick the box to confirm deleting dataset {meta['name']!r}")
    await audited(request, p, "dataset.delete", did, lambda: st.run(service.delete_dataset, st.home, did))
    return RedirectResponse("/ui/datasets?done=" + quote(f"deleted dataset {meta['name']} ({did[:8]})"),
                            status_code=303)
