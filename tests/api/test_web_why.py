"""The result page says why rows are anomalous (issue 22): the top rows' top features and a
selected row's attributions as a server-drawn SVG chart, next to its values and the training
medians, all equal to the detector's own explanation."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")
pytest.importorskip("jinja2", reason="the http extra is not installed (pip install '.[http]')")

from pynomaly import service  # noqa: E402

from _http_helpers import ApiServer  # noqa: E402
from _web_helpers import WebClient, add_user, error_text, to_csv  # noqa: E402
from conftest import dataset_path  # noqa: E402

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A server, the id of a result of detector "cardio" on uploaded rows, and those rows."""
    with np.load(dataset_path("cardio")) as d:
        X = np.asarray(d["X"], dtype=np.float64)
    home = tmp_path_factory.mktemp("webhome")
    service.train(home, "cardio", X, "IsolationForest", {"n_estimators": 50, "random_state": 0})
    add_user(home, "op", "operator", PASSWORD)
    server = ApiServer(home, "--max-body", "2M")
    try:
        c = WebClient(server)
        assert c.sign_in("op", PASSWORD)[0] == 303
        status, h, page = c.post("/ui/detect", {"csrf": c.csrf("/ui/detect"), "detector": "cardio"},
                                 files={"file": ("cardio.csv", to_csv(X))})
        assert status == 303, error_text(page)
        yield c, home, h["location"], X
    finally:
        server.stop()


def _why_table(page: str) -> list:
    body = page.split('id="why-features"', 1)[1].split("</table>", 1)[0]
    return [(html.unescape(f), float(v), m, float(a)) for f, v, m, a in re.findall(
        r'<tr><th scope="row">([^<]*)</th><td class="num">([^<]*)</td><td class="num">([^<]*)</td>'
        r'<td class="num">([^<]*)</td></tr>', body)]


@pytest.mark.parametrize("pick", [None, 5])
def test_selected_rows_attributions_equal_the_library(result, pick):
    c, home, url, X = result
    scorer = service.load_for_scoring(home, "cardio")
    scores = scorer.score(X)
    row = int(np.argmax(scores)) if pick is None else pick
    status, _, page = c.get(url if pick is None else f"{url}?row={pick}")
    assert status == 200, error_text(page)
    assert f'<h2 id="why">Why row {row} ' in page and '<svg class="chart" id="attributions"' in page
    e = scorer.explain(X[row:row + 1])
    table = _why_table(page)
    order = np.argsort(-np.abs(e.values[0]), kind="stable")[:20]
    assert [t[0] for t in table] == [e.feature_names[j] for j in order]  # largest share first
    np.testing.assert_allclose([t[3] for t in table], e.values[0][order], rtol=1e-5, atol=1e-12)  # shown to 6 digits
    np.testing.assert_allclose([t[1] for t in table], X[row, order], rtol=1e-5, atol=1e-12)
    for (_, _, median, _), j in zip(table, order):  # from the drift reference's 100 quantile bins
        lo, hi = np.quantile(X[:, j], [0.49, 0.52])
        slack = 1e-5 * max(abs(lo), abs(hi)) + 1e-12  # shown to 6 digits
        assert lo - slack <= float(median) <= hi + slack
    bars = re.findall(r'<rect class="bar (push|pull)"[^>]*><title>([^<]*): ([^<]*)</title>', page)
    assert [(b[1], b[0]) for b in bars] == [(e.feature_names[j], "push" if e.values[0][j] > 0 else "pull")
                                            for j in order]


def test_top_rows_name_their_top_features(result):
    c, home, url, X = result
    _, _, page = c.get(url)
    scorer = service.load_for_scoring(home, "cardio")
    top = np.argsort(-scorer.score(X), kind="stable")[:20]
    cells = re.findall(r'<a href="\?row=(\d+)#why"[^>]*>\d+</a></th>.*?<td class="top-features">([^<]*)</td>', page,
                       re.S)
    assert [int(r) for r, _ in cells] == top.tolist()
    e = scorer.explain(X[top])
    assert [names.split(", ") for _, names in cells] == [[e.feature_names[j] for j in idx] for idx in e.top_indices(3)]


@pytest.mark.parametrize("row", ["-1", "abc", "99999"])
def test_a_bad_row_is_a_readable_400(result, row):
    c, _, url, _ = result
    status, _, page = c.get(f"{url}?row={row}")
    assert status == 400 and "row" in error_text(page)
