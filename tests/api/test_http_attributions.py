"""Attributions on the HTTP face (issue 22): the OIP ``attributions`` output (JSON, binary,
tritonclient) and the detection API's ``explain: K``, equal to the library, with clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")

from pynomaly import service  # noqa: E402

from _daemon_helpers import cardio  # noqa: E402
from _http_helpers import ApiServer, infer_body, make_token, outputs_of  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    X = cardio()
    home = tmp_path_factory.mktemp("home")
    service.train(home, "forest", X[:1500], "IsolationForest", {"n_estimators": 50, "random_state": 0})
    service.train(home, "knn", X[:1500], "KNN", {"n_neighbors": 5})
    token = make_token(home, "operator")
    s = ApiServer(home, "--max-body", "16M")
    try:
        yield s, home, token, X[1500:1600]
    finally:
        s.stop()


def _library(home, name, X, method=None):
    return service.load_for_scoring(home, name).explain(X, method)


@pytest.mark.parametrize("name,method", [("forest", None), ("forest", "path"), ("knn", None)])
def test_oip_json_attributions_equal_the_library(server, name, method):
    s, home, token, X = server
    params = {} if method is None else {"parameters": {"explain_method": method}}
    body = infer_body(X, outputs=[{"name": "scores"}, {"name": "attributions"}], **params)
    status, doc = s.json("POST", f"/v2/models/{name}/infer", body, token=token)
    assert status == 200, doc
    head = {o["name"]: o for o in doc["outputs"]}["attributions"]
    assert head["datatype"] == "FP64" and head["shape"] == list(X.shape)
    got = np.asarray(head["data"], dtype=np.float64).reshape(head["shape"])  # flat, row-major
    np.testing.assert_array_equal(got, _library(home, name, X, method).values)  # floats sent shortest-exact
    np.testing.assert_array_equal(outputs_of(doc)["scores"], service.load_for_scoring(home, name).score(X))


def test_tritonclient_gets_attributions_json_and_binary(server):
    th = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    s, home, token, X = server
    client = th.InferenceServerClient(s.url)
    want = _library(home, "forest", X, "path").values
    for binary in (True, False):
        inp = th.InferInput("input", list(X.shape), "FP64")
        inp.set_data_from_numpy(X, binary_data=binary)
        outs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("labels", "attributions")]
        r = client.infer("forest", [inp], outputs=outs, headers={"Authorization": f"Bearer {token}"},
                         parameters={"explain_method": "path"})
        assert r.as_numpy("attributions").shape == X.shape
        np.testing.assert_array_equal(r.as_numpy("attributions"), want)
    meta = client.get_model_metadata("forest", headers={"Authorization": f"Bearer {token}"})
    assert {"name": "attributions", "datatype": "FP64", "shape": [-1, X.shape[1]]} in meta["outputs"]
    client.close()


def test_large_binary_request_keeps_its_rows_for_attributions(server):
    """Bodies of 1 MiB and more are scored while they arrive unless they ask for attributions."""
    s, home, token, _ = server
    X = np.tile(cardio(), (4, 1))  # 7324 rows: over the streaming size
    head = json.dumps({
        "inputs": [{"name": "x", "shape": list(X.shape), "datatype": "FP64", "parameters": {"binary_data_size": X.nbytes}}],
        "outputs": [{"name": "attributions", "parameters": {"binary_data": True}}],
        "parameters": {"explain_method": "path"},
    }).encode()
    status, headers, body = s.request(
        "POST", "/v2/models/forest/infer", head + X.astype("<f8").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
        token=token)
    assert status == 200, body
    n = int(headers["inference-header-content-length"])
    got = np.frombuffer(body[n:], "<f8").reshape(X.shape)
    np.testing.assert_array_equal(got, _library(home, "forest", X, "path").values)


@pytest.mark.parametrize("params,outputs,message", [
    ({"explain_method": "nope"}, ["attributions"], "cannot explain with method 'nope'"),
    ({"explain_method": "path"}, ["scores"], "applies to the output 'attributions'"),
    ({}, ["why"], "unknown output 'why'"),
])
def test_oip_bad_attribution_requests_get_400(server, params, outputs, message):
    s, _, token, X = server
    body = infer_body(X[:2], outputs=[{"name": o} for o in outputs], parameters=params)
    status, doc = s.json("POST", "/v2/models/forest/infer", body, token=token)
    assert status == 400 and message in doc["error"], doc


@pytest.mark.parametrize("name,method", [("forest", None), ("knn", None), ("forest", "path")])
def test_detect_api_explain_gives_each_anomaly_its_top_features(server, name, method):
    s, home, token, X = server
    body = {"detector": name, "data": X.tolist(), "explain": 3, "save": False, "contamination": 0.1}
    if method:
        body["explain_method"] = method
    status, doc = s.json("POST", "/api/v1/detect", body, token=token)
    assert status == 200, doc
    e = _library(home, name, X, method)
    assert doc["anomalies"] and len(doc["anomalies"]) == doc["metrics"]["anomalies_detected"]
    for a in doc["anomalies"]:
        i = a["sample_index"]
        top = [dict(feature=f, value=v, attribution=w) for f, v, w in e.top(3)[i]]
        assert a["top_features"] == top
    plain = s.json("POST", "/api/v1/detect", {"detector": name, "data": X.tolist(), "save": False}, token=token)[1]
    assert all("top_features" not in a for a in plain["anomalies"])


@pytest.mark.parametrize("extra,message", [
    ({"explain": 0}, "from 1 to 21"),
    ({"explain": 22}, "from 1 to 21"),
    ({"explain": 2, "explain_method": "nope"}, "cannot explain with method 'nope'"),
    ({"explain_method": "path"}, "give explain"),
])
def test_detect_api_bad_explain_requests_get_400(server, extra, message):
    s, _, token, X = server
    status, doc = s.json("POST", "/api/v1/detect", {"detector": "forest", "data": X[:5].tolist(), **extra}, token=token)
    assert status == 400 and message in json.dumps(doc), doc


def test_detect_api_stores_each_anomalys_top_features_with_the_result(server):
    """A saved detection with explain: K keeps what it returned: GET of the result and its page
    show the same top features later."""
    pytest.importorskip("jinja2", reason="the http extra is not installed (pip install '.[http]')")
    import html
    import re

    from _web_helpers import WebClient, error_text

    s, home, token, X = server
    body = {"detector": "forest", "data": X.tolist(), "explain": 3, "contamination": 0.1}
    status, posted = s.json("POST", "/api/v1/detect", body, token=token)
    assert status == 200, posted
    assert posted["anomalies"] and all(len(a["top_features"]) == 3 for a in posted["anomalies"])
    status, got = s.json("GET", f"/api/v1/results/{posted['detection_id']}", token=token)
    assert status == 200, got
    assert got["anomalies"] == posted["anomalies"]  # bit-equal: the floats went through the store exactly
    plain = s.json("POST", "/api/v1/detect", {"detector": "forest", "data": X.tolist()}, token=token)[1]
    again = s.json("GET", f"/api/v1/results/{plain['detection_id']}", token=token)[1]
    assert again["anomalies"] and all("top_features" not in a for a in again["anomalies"])

    c = WebClient(s)
    assert c.sign_in(token=token)[0] == 303
    status, _, page = c.get(f"/ui/results/{posted['detection_id']}")
    assert status == 200, error_text(page)
    table = page.split('id="kept-features"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<th scope="row" class="num">(\d+)</th>.*?<td class="top-features">(.*?)</td>', table, re.S)
    shown = {int(i): [(html.unescape(f), float(v.replace(",", "")), float(a.replace(",", ""))) for f, v, a in
                      re.findall(r'<span class="kept-feature">([^<]*?) = ([^ <]*) \(([^)<]*)\)</span>', cell)]
             for i, cell in rows}
    by_row = {a["sample_index"]: a["top_features"] for a in posted["anomalies"]}
    assert shown and set(shown) <= set(by_row)
    for i, features in shown.items():
        assert [f for f, _, _ in features] == [t["feature"] for t in by_row[i]]
        np.testing.assert_allclose([v for _, v, _ in features], [t["value"] for t in by_row[i]], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose([a for _, _, a in features], [t["attribution"] for t in by_row[i]],
                                   rtol=1e-5, atol=1e-9)
