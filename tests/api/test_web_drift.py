"""The drift panel (issue 24) over plain HTTP against a real server: a detection run from the
pages counts in the window, the panel ranks the shifted feature first with its bar marked and
draws the served scores over the training ones, and says in words what it cannot show (no rows
yet, no reference); an unknown detector is a 404, signed-out visitors go to sign in."""

from __future__ import annotations

import re
from html import unescape

import pytest

pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")
pytest.importorskip("jinja2", reason="the http extra is not installed (pip install '.[http]')")

from pynomaly import service  # noqa: E402
from pynomaly.service import drift  # noqa: E402

from _http_helpers import ApiServer  # noqa: E402
from _web_helpers import WebClient, add_role_users, error_text, to_csv  # noqa: E402
from _web_helpers import signed_in as _signed_in  # noqa: E402
from conftest import drift_halves  # noqa: E402

PASSWORD = "correct horse battery"
PARAMS = {"n_estimators": 50, "random_state": 0}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    train, _, moved = drift_halves(seed=3, feature=2)
    home = tmp_path_factory.mktemp("drifthome")
    for name in ("moved", "idle", "few"):
        service.train(home, name, train, "IsolationForest", PARAMS)
    service.export(home, "idle", home.parent / "idle.pnx")
    service.import_detector(home, home.parent / "idle.pnx", "imported")
    add_role_users(home, ("viewer", "operator"), PASSWORD)
    server = ApiServer(home)
    try:
        yield server, home, moved
    finally:
        server.stop()


def signed_in(server, role: str) -> WebClient:
    return _signed_in(server, role, PASSWORD)


def feature_rows(page: str) -> list:
    body = re.search(r'<table id="drift-features".*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [[unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def test_a_page_detection_shows_in_the_drift_panel(site):
    server, home, moved = site
    op = signed_in(server, "operator")
    status, h, page = op.post("/ui/detect", {"csrf": op.csrf("/ui/detect"), "detector": "moved"},
                              files={"file": ("moved.csv", to_csv(moved))})
    assert status == 303, error_text(page)
    viewer = signed_in(server, "viewer")
    status, _, page = viewer.get("/ui/detectors/moved")
    assert status == 200 and 'href="/ui/detectors/moved/drift"' in page
    status, _, page = viewer.get("/ui/detectors/moved/drift")
    assert status == 200, error_text(page)
    doc = drift.report(home, "moved")
    rows = feature_rows(page)
    assert [r[0] for r in rows] == [f["feature"] for f in doc["features"]] and rows[0][0] == "x2"
    assert rows[0][-1] == "yes" and [r[0] for r in rows if r[-1] == "yes"] == ["x2"]
    assert float(rows[0][1]) == pytest.approx(doc["features"][0]["psi"], abs=1e-4)
    assert page.count('class="psi-bar"') == len(rows) and page.count('class="bar flagged"') == 1
    assert f"{len(moved):,} rows served" in page and ">drifted<" in page
    chart = re.search(r'<svg class="chart" id="drift-scores".*?</svg>', page, re.S).group(0)
    assert 'data-label="training"' in chart and 'data-label="served"' in chart and 'class="threshold"' in chart


def test_what_the_panel_cannot_show_is_said(site):
    server, _, _ = site
    viewer = signed_in(server, "viewer")
    status, _, page = viewer.get("/ui/detectors/idle/drift?window=15m")
    assert status == 200 and "no rows of detector &#39;idle&#39; version 1 were served in the last 15 min" in page
    assert 'id="drift-features"' not in page
    status, _, page = viewer.get("/ui/detectors/imported/drift")
    assert status == 200 and "has no drift reference" in page and "--set-reference" in page
    status, _, page = viewer.get("/ui/detectors/nope/drift")
    assert status == 404 and "no detector named" in error_text(page)
    status, _, page = viewer.get("/ui/detectors/moved/drift?window=soon")
    assert status == 400 and "is not a window" in error_text(page)
    status, h, _ = WebClient(server).get("/ui/detectors/moved/drift")
    assert status in (302, 303) and "/" in h["location"]


def test_a_window_too_small_to_decide_says_so_on_the_panel(site):
    server, _, moved = site
    op = signed_in(server, "operator")
    status, _, page = op.post("/ui/detect", {"csrf": op.csrf("/ui/detect"), "detector": "few"},
                              files={"file": ("few.csv", to_csv(moved[:100]))})
    assert status == 303, error_text(page)
    status, _, page = signed_in(server, "viewer").get("/ui/detectors/few/drift")
    assert status == 200, error_text(page)
    summary = unescape(re.sub(r"<[^>]+>", "", re.search(r'<p id="drift-summary">(.*?)</p>', page, re.S).group(1)))
    assert "undecided: 100 rows counted, at least 300 needed to decide drift" in " ".join(summary.split())
    rows = feature_rows(page)
    assert rows[0][0] == "x2" and float(rows[0][1]) >= 0.2  # the statistics are shown
    assert {r[-1] for r in rows} == {"undecided"} and 'class="bar flagged"' not in page and ">drifted<" not in page
