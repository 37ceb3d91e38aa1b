"""Messages that tell a stuck user what to do (issue 26), on every face: the HTTP API, the
daemon and its client, the command line. Real servers and real commands, one home."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the HTTP face needs pynomaly[http]")

import pynomaly  # noqa: E402
from pynomaly import service  # noqa: E402
from pynomaly._client_io import DaemonError, DaemonUnavailableError  # noqa: E402

from _daemon_helpers import DaemonProcess, cardio  # noqa: E402
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


def test_an_unknown_detector_over_the_daemon_suggests_the_close_name(home, tmp_path):
    d = DaemonProcess(tmp_path, None, "--home", str(home))
    try:
        with pynomaly.Client(d.sock) as c:
            assert c.detect("cardio", cardio()[:3]).scores.shape == (3,)
            with pytest.raises(DaemonError) as e:
                c.detect("cardoi", cardio()[:3])
    finally:
        d.stop()
    assert e.value.code == "unknown_detector" and "did you mean 'cardio'" in str(e.value)
    assert "pynomaly list" in str(e.value)


def test_a_client_with_no_daemon_suggests_pynomaly_serve(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(DaemonUnavailableError) as e:
        pynomaly.Client(path).health()
    assert f"pynomaly serve --socket {path}" in str(e.value)


def _cli(*args, stdin=subprocess.DEVNULL):
    env = {k: v for k, v in os.environ.items() if k != "PYNOMALY_HOME"}
    return subprocess.run([sys.executable, "-m", "pynomaly", *map(str, args)], capture_output=True, text=True,
                          stdin=stdin, env=env, timeout=120)


def test_an_unknown_detector_on_the_command_line_suggests_the_close_name(home, tmp_path):
    np.save(tmp_path / "x.npy", cardio()[:5])
    p = _cli("--home", home, "detect", "--detector", "cardoi", "--data", tmp_path / "x.npy")
    assert p.returncode == 1 and "did you mean 'cardio'" in p.stderr and "pynomaly list" in p.stderr


def test_user_add_without_a_terminal_names_the_non_interactive_option(home):
    p = _cli("--home", home, "user", "add", "bob", "--role", "viewer")
    assert p.returncode == 1 and "--password-stdin" in p.stderr and "no terminal" in p.stderr
    p = subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), "user", "add", "bob", "--role",
                        "viewer", "--password-stdin"], input="correct horse battery\n", capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
