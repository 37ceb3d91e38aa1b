"""Messages that tell a stuck user what to do (issue 26), over HTTP: a token from another home
or no token at all, plain rows posted to OIP infer, an unknown detector. A real server."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the HTTP face needs pynomaly[http]")

from pynomaly import service  # noqa: E402

from _daemon_helpers import cardio  # noqa: E402
from _http_helpers import ApiServer, infer_body, make_token  # noqa: E402


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("home")
    service.train(h, "cardio", cardio()[:500], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    return h


@pytest.fixture(scope="module")
def server(home):
    s = ApiServer(home)
    try:
        yield s
    finally:
        s.stop()


def _error(server, path, token, body=None):
    status, _, raw = server.request("POST" if body is not None else "GET", path, body, token=token)
    return status, json.loads(raw)["error"]


def test_a_token_from_another_home_says_where_tokens_come_from(server, tmp_path):
    other = make_token(tmp_path / "other-home", "viewer")
    status, msg = _error(server, "/api/v1/detectors", other)
    assert status == 401
    assert "unknown key" in msg and "this server's home" in msg and "pynomaly token create" in msg


@pytest.mark.parametrize("garbage", ["not.a.token", "hello", "eyJhbGciOiJIUzI1NiJ9.%%%.x"])
def test_a_garbage_token_is_called_not_a_pynomaly_token_without_codec_words(server, garbage):
    status, msg = _error(server, "/api/v1/detectors", garbage)
    assert status == 401 and "not a pynomaly token" in msg and "pynomaly token create" in msg
    for codec_words in ("codec", "utf-8", "Invalid header", "padding", "decode"):
        assert codec_words not in msg, msg


def test_plain_rows_posted_to_oip_infer_show_the_request_shape(server, home):
    token = make_token(home, "operator")
    status, msg = _error(server, "/v2/models/cardio/infer", token, cardio()[:2].tolist())
    assert status == 400 and '{"inputs": [{"name"' in msg and '"datatype"' in msg and '"data"' in msg
    # a real OIP request still works
    assert server.request("POST", "/v2/models/cardio/infer", infer_body(cardio()[:2]), token=token)[0] == 200


def test_an_unknown_detector_over_http_suggests_the_close_name(server, home):
    token = make_token(home, "operator")
    status, msg = _error(server, "/v2/models/cardoi/infer", token, infer_body(cardio()[:2]))
    assert status == 404 and "did you mean 'cardio'" in msg and "pynomaly list" in msg
    status, msg = _error(server, "/api/v1/detectors/cardoi", token)
    assert status == 404 and "did you mean 'cardio'" in msg
    status, msg = _error(server, "/api/v1/detectors/zzzzzzzz", token)
    assert status == 404 and "did you mean" not in msg and "pynomaly list" in msg
