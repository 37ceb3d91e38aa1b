"""The HTTP face against a real server process, its detection API and what runs behind it:
uploads, train/export/import, large binary requests scored as they arrive, workers and a Unix
socket, slow clients, the audit trail and encrypted homes, jobs, metrics and alerts over HTTP.
(The Open Inference Protocol, tokens and roles: test_http.py.)"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")
jwt = pytest.importorskip("jwt")

import pynomaly  # noqa: E402
from pynomaly import service  # noqa: E402

from _daemon_helpers import cardio  # noqa: E402
from _http_helpers import KINDS, ApiServer, _name, _raw_infer, infer_body, make_token, outputs_of, served  # noqa: E402,F401,F811 - served is a fixture
from conftest import dataset_path  # noqa: E402


# -- the detection API -------------------------------------------------------------------------------
def test_upload_detect_and_read_back_a_real_dataset(served, tmp_path):
    server, home, tokens, X, _ = served
    with np.load(dataset_path("cardio")) as z:
        data = z["X"]
    csv = tmp_path / "cardio.csv"
    names = [f"f{i}" for i in range(data.shape[1])]
    np.savetxt(csv, data, delimiter=",", header=",".join(names), comments="", fmt="%.17g")
    # As a form upload (what a browser sends).
    boundary = "pynomaly-test-boundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cardio.csv\"\r\n"
            f"Content-Type: text/csv\r\n\r\n").encode() + csv.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, _, raw = server.request("POST", "/api/v1/datasets", form, token=tokens["operator"],
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 201, raw
    ds = json.loads(raw)
    assert ds["n_rows"] == data.shape[0] and ds["column_names"] == names and ds["stored"]
    service.train(home, "cardio-api", data, "IsolationForest", {"n_estimators": 50, "random_state": 1})
    status, det = server.json("POST", "/api/v1/detect", {"detector": "cardio-api", "dataset_id": ds["id"],
                                                         "contamination": 0.05}, token=tokens["operator"])
    assert status == 200, det
    want = service.load_for_scoring(home, "cardio-api").detect(data, contamination=0.05)
    assert det["metrics"]["total_samples"] == data.shape[0]
    assert det["metrics"]["anomalies_detected"] == int(want.labels.sum())
    assert sorted(a["sample_index"] for a in det["anomalies"]) == want.anomaly_indices.tolist()
    assert all(a["score"] == want.scores[a["sample_index"]] for a in det["anomalies"])
    scores = [a["score"] for a in det["anomalies"]]
    assert scores == sorted(scores, reverse=True)  # most anomalous first
    status, back = server.json("GET", f"/api/v1/results/{det['detection_id']}?include_scores=true",
                               token=tokens["viewer"])
    assert status == 200 and back["detector"] == "cardio-api" and np.array_equal(back["scores"], want.scores)
    history = server.json("GET", "/api/v1/detectors/cardio-api/results", token=tokens["viewer"])[1]
    assert det["detection_id"] in [r["id"] for r in history]
    # Inline rows give the same scores.
    status, inline = server.json("POST", "/api/v1/detect", {"detector": "cardio-api", "data": data[:20].tolist(),
                                                            "include_scores": True}, token=tokens["operator"])
    assert status == 200 and np.array_equal(inline["scores"], want.scores[:20])


@pytest.mark.parametrize("kind", ["npy", "npz", "parquet"])
def test_upload_binary_formats_by_content_type_or_name(served, tmp_path, kind):
    server, home, tokens, X, _ = served
    path = tmp_path / f"rows.{kind}"
    if kind == "npy":
        np.save(path, X)
    elif kind == "npz":
        np.savez(path, X=X)
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({f"c{i}": X[:, i] for i in range(X.shape[1])}), path)
    status, _, raw = server.request("POST", f"/api/v1/datasets?name=rows.{kind}", path.read_bytes(),
                                    headers={"Content-Type": "application/octet-stream"}, token=tokens["operator"])
    assert status == 201, raw
    X_back, _ = service.dataset_rows(home, json.loads(raw)["id"])
    assert np.array_equal(X_back, X)


@pytest.mark.parametrize("case", ["empty", "not_numeric", "wrong_name", "lying_name", "no_type"])
def test_bad_uploads_get_a_clear_error_and_store_nothing(served, case):
    server, home, tokens, X, _ = served
    before = len(service.list_datasets(home))
    body, path, ctype, want = {
        "empty": (b"", "/api/v1/datasets?name=a.csv", "text/csv", 400),
        "not_numeric": (b"a,b\n1,x\n", "/api/v1/datasets?name=a.csv", "text/csv", 400),
        "wrong_name": (b"1,2\n", "/api/v1/datasets?name=a.exe", "application/octet-stream", 415),
        "lying_name": (b"1,2\n3,4\n", "/api/v1/datasets?name=a.npy", "application/octet-stream", 400),
        "no_type": (b"1,2\n", "/api/v1/datasets", "application/octet-stream", 415),
    }[case]
    status, _, raw = server.request("POST", path, body, headers={"Content-Type": ctype}, token=tokens["operator"])
    assert status == want, raw
    assert "Traceback" not in json.loads(raw)["error"]
    assert len(service.list_datasets(home)) == before


def test_train_archive_activate_export_import_delete(served, tmp_path):
    server, home, tokens, X, _ = served
    admin = tokens["admin"]
    ds = service.store_dataset(home, X, "life.npy")
    status, d = server.json("POST", "/api/v1/detectors/life/train",
                            {"dataset_id": ds["id"], "params": {"n_estimators": 20, "random_state": 3}}, token=admin)
    assert status == 200 and d["version"] == 1 and d["status"] == "active"
    want = pytest.importorskip("pynomaly").IsolationForest(n_estimators=20, random_state=3, contamination=0.1).fit(X)
    status, doc = server.json("POST", "/v2/models/life/infer", infer_body(X[:5]), token=admin)
    assert np.array_equal(outputs_of(doc)["scores"], want.decision_function(X[:5]))
    assert server.json("POST", "/api/v1/detectors/life/archive", token=admin)[1]["status"] == "archived"
    status, err = server.json("POST", "/v2/models/life/infer", infer_body(X[:5]), token=admin)
    assert status == 409 and "archived" in err["error"]
    assert server.json("POST", "/api/v1/detectors/life/activate", token=admin)[1]["status"] == "active"
    assert server.json("POST", "/v2/models/life/infer", infer_body(X[:5]), token=admin)[0] == 200
    status, _, blob = server.request("GET", "/api/v1/detectors/life/export", token=admin)
    assert status == 200 and blob
    status, d2 = server.json("POST", "/api/v1/detectors/import?name=life-copy", blob, token=admin,
                             headers={"Content-Type": "application/octet-stream"})
    assert status == 200 and d2["name"] == "life-copy"
    status, doc = server.json("POST", "/v2/models/life-copy/infer", infer_body(X[:5]), token=admin)
    assert np.array_equal(outputs_of(doc)["scores"], want.decision_function(X[:5]))
    assert server.json("DELETE", "/api/v1/detectors/life", token=admin)[0] == 200
    assert server.json("POST", "/v2/models/life/infer", infer_body(X[:5]), token=admin)[0] == 404
    assert server.json("GET", "/api/v1/detectors/life", token=admin)[0] == 404
    assert server.json("GET", "/api/v1/results/0000", token=admin)[0] == 404
    assert server.json("POST", "/api/v1/detect", {"detector": "life-copy"}, token=admin)[0] == 400
    status, err = server.json("POST", "/api/v1/detectors/bad%20name/train", {"dataset_id": ds["id"]}, token=admin)
    assert status == 400 and "not a detector name" in err["error"]


def test_http_import_never_trusts_a_pickle_from_elsewhere(served, tmp_path):
    """Issue 25, item 2: an admin token is not a shell. A pickled export signed by another
    home's key is refused (403, pointing to the CLI on the server's machine), trust_pickle is
    not a parameter at all, and nothing is stored; one signed by this home's key still imports."""
    pytest.importorskip("pyod")
    server, home, tokens, X, _ = served
    admin = tokens["admin"]
    octet = {"Content-Type": "application/octet-stream"}
    other = tmp_path / "elsewhere"
    service.train(other, "pickled", X, "pyod.HBOS")
    foreign = service.export(other, "pickled", tmp_path / "foreign.pnx").read_bytes()
    for query in ("", "&trust_pickle=true", "&trust_pickle=1"):
        status, err = server.json("POST", "/api/v1/detectors/import?name=shell" + query, foreign, token=admin,
                                  headers=octet)
        assert status == (403 if not query else 400), err
        assert "pynomaly --home HOME import FILE --trust-pickle" in err["error"]
    assert server.json("GET", "/api/v1/detectors/shell", token=admin)[0] == 404
    for junk in (b"not an export", foreign[:100], foreign[:-1] + bytes([foreign[-1] ^ 1])):
        status, err = server.json("POST", "/api/v1/detectors/import?name=junk", junk, token=admin, headers=octet)
        assert status == 400 and "upload.pnx" in err["error"], err  # the caller's bad file, not a storage error
    assert "shell" not in [d.name for d in service.list_detectors(home)]
    own = service.export(home, "pyod-ecod", tmp_path / "own.pnx").read_bytes()
    status, d = server.json("POST", "/api/v1/detectors/import?name=own-pickle", own, token=admin, headers=octet)
    assert status == 200 and d["name"] == "own-pickle"
    status, doc = server.json("POST", "/v2/models/own-pickle/infer", infer_body(X[:5]), token=admin)
    assert status == 200
    want = service.load_for_scoring(home, "pyod-ecod").model.decision_function(X[:5])
    np.testing.assert_allclose(outputs_of(doc)["scores"], want)


def test_a_version_saved_elsewhere_is_served_within_a_second(served):
    server, home, tokens, X, _ = served
    service.train(home, "fresh", X, "IsolationForest", {"n_estimators": 10, "random_state": 0})
    t = tokens["operator"]
    first = outputs_of(server.json("POST", "/v2/models/fresh/infer", infer_body(X[:3]), token=t)[1])["scores"]
    service.train(home, "fresh", X, "IsolationForest", {"n_estimators": 10, "random_state": 1})
    want = service.load_for_scoring(home, "fresh").detect(X[:3]).scores
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, doc = server.json("POST", "/v2/models/fresh/infer", infer_body(X[:3]), token=t)
        if doc["model_version"] == "2":
            break
        time.sleep(0.1)
    assert doc["model_version"] == "2" and np.array_equal(outputs_of(doc)["scores"], want)
    assert not np.array_equal(first, want)


def test_openapi_schema_lists_the_detection_api(served):
    server = served[0]
    status, spec = server.json("GET", "/openapi.json")
    assert status == 200 and "/api/v1/detect" in spec["paths"] and "/api/v1/datasets" in spec["paths"]
    assert server.request("GET", "/docs")[0] == 404  # Swagger UI loads from a CDN (issue 25.8)


def test_importing_pynomaly_does_not_import_the_http_stack():
    code = ("import sys, pynomaly, pynomaly.service, pynomaly.serving, pynomaly.cli\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'starlette', 'uvicorn', 'jwt', 'pydantic', 'pynomaly_api'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""



# -- large binary requests: scored block by block while they arrive ---------------------------------
def _binary_request(rows, datatype="FP64", dtype="<f8"):
    raw = np.ascontiguousarray(rows).astype(dtype).tobytes()
    head = json.dumps({"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": datatype,
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "scores", "parameters": {"binary_data": True}}, {"name": "labels"}],
                       "parameters": {"contamination": 0.1}}).encode()
    return head, raw


@pytest.mark.parametrize("datatype, dtype", [("FP64", "<f8"), ("FP32", "<f4"), ("INT16", "<i2")])
def test_large_binary_requests_equal_in_process_scoring(served, datatype, dtype):
    server, home, tokens, X, _ = served
    rows = cardio()[np.arange(40_000) % 1831] * (100 if datatype == "INT16" else 1)
    head, raw = _binary_request(rows, datatype, dtype)
    assert len(head) + len(raw) > 1 << 20  # streamed, in several blocks
    streamed = server.json("GET", "/api/v1/stats", token=tokens["viewer"])[1]["counters"]["streamed_requests"]
    for name in ("isolationforest", "lof", "knn"):
        status, headers, body = server.request(
            "POST", f"/v2/models/{name}/infer", head + raw, token=tokens["operator"],
            headers={"Inference-Header-Content-Length": str(len(head))})
        assert status == 200, body[:300]
        n = int(headers["inference-header-content-length"])
        doc = json.loads(body[:n])
        want = service.load_for_scoring(home, name).detect(np.frombuffer(raw, dtype).reshape(rows.shape).astype(float),
                                                            contamination=0.1)
        assert np.array_equal(np.frombuffer(body[n:], "<f8"), want.scores), name
        assert np.array_equal(np.asarray(doc["outputs"][1]["data"]), want.labels.astype(bool))
    # ... and all three were scored block by block while they arrived (rows score independently).
    stats = server.json("GET", "/api/v1/stats", token=tokens["viewer"])[1]
    assert stats["counters"]["streamed_requests"] == streamed + 3
    if "pyod.ECOD" in served[4]:  # a PyOD model is read whole, then scored
        status, _, _ = server.request("POST", "/v2/models/pyod-ecod/infer", head + raw, token=tokens["operator"],
                                      headers={"Inference-Header-Content-Length": str(len(head))})
        assert status == 200
        assert server.json("GET", "/api/v1/stats", token=tokens["viewer"])[1]["counters"]["streamed_requests"] == \
            streamed + 3


def test_large_binary_request_with_bad_rows_or_a_short_body(served):
    import socket

    server, home, tokens, X, _ = served
    rows = cardio()[np.arange(40_000) % 1831].copy()
    rows[35_000, 3] = np.nan  # in a late block
    head, raw = _binary_request(rows)
    status, _, body = _raw_infer(server, tokens["operator"], head, raw, len(head))
    assert status == 400 and (b"NaN" in body or b"finite" in body), body[:300]
    # A client that stops sending halfway (Content-Length says more) and closes its side.
    head, raw = _binary_request(cardio()[np.arange(40_000) % 1831])
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall((f"POST /v2/models/isolationforest/infer HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {tokens['operator']}\r\nInference-Header-Content-Length: {len(head)}\r\n"
                   f"Content-Length: {len(head) + len(raw)}\r\n\r\n").encode() + head + raw[: len(raw) // 2])
        s.shutdown(socket.SHUT_WR)
        s.settimeout(30)
        s.recv(65536)  # whatever the server says (or nothing): it must not hang or die
    assert server.json("POST", "/v2/models/isolationforest/infer", infer_body(X[:2]), token=tokens["operator"])[0] == 200
    assert server.proc.poll() is None


def test_large_request_with_json_data_and_a_header_length(served):
    """A header length equal to the whole body (JSON data, no binary part) is read whole."""
    server, home, tokens, X, _ = served
    rows = cardio()[np.arange(12_000) % 1831]
    body = json.dumps(infer_body(rows)).encode()
    assert len(body) > 1 << 20
    status, _, raw = _raw_infer(server, tokens["operator"], body, b"", len(body))
    assert status == 200, raw[:200]
    got = outputs_of(json.loads(raw))["scores"]
    assert np.array_equal(got, service.load_for_scoring(home, "isolationforest").detect(rows).scores)


def test_several_workers_and_a_unix_socket(tmp_path):
    import http.client
    import socket as socketlib

    home = tmp_path / "home"
    X = cardio()
    service.train(home, "d", X[:500], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    want = service.load_for_scoring(home, "d").detect(X[:3]).scores
    token = make_token(home, "operator")
    server = ApiServer(home, "--workers", "2")
    try:
        for _ in range(6):  # spread over both processes; each answers the same
            status, doc = server.json("POST", "/v2/models/d/infer", infer_body(X[:3]), token=token)
            assert status == 200 and np.array_equal(outputs_of(doc)["scores"], want)
    finally:
        assert server.stop() == 0

    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socketlib.socket(socketlib.AF_UNIX)
            self.sock.connect(str(tmp_path / "api.sock"))

    proc = subprocess.Popen([sys.executable, "-m", "pynomaly", "--home", str(home), "api", "--uds",
                             str(tmp_path / "api.sock")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "api.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        conn = UnixConnection("localhost", timeout=30)
        conn.request("POST", "/v2/models/d/infer", json.dumps(infer_body(X[:3])),
                     headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        assert r.status == 200 and np.array_equal(outputs_of(json.loads(r.read()))["scores"], want)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_slow_client_gets_504_and_others_are_served_meanwhile(tmp_path):
    import socket

    home = tmp_path / "home"
    X = cardio()
    service.train(home, "d", X[:500], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    token = make_token(home, "operator")
    server = ApiServer(home, "--request-timeout", "1")
    try:
        body = json.dumps(infer_body(X[:2])).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall((f"POST /v2/models/d/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:10])  # and then nothing
            assert server.json("POST", "/v2/models/d/infer", infer_body(X[:2]), token=token)[0] == 200
            s.settimeout(30)
            reply = b""
            while b"}" not in reply:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 504") and b"longer than" in reply
        assert server.json("POST", "/v2/models/d/infer", infer_body(X[:2]), token=token)[0] == 200
    finally:
        server.stop()


def test_deadline_raises_timeout_only_for_its_own_cancel():
    import asyncio

    from pynomaly_api.body import deadline

    async def main():
        with pytest.raises(TimeoutError):
            with deadline(0.05):
                await asyncio.sleep(5)
        with deadline(5):
            await asyncio.sleep(0.01)  # finishes in time: nothing raised
        task = asyncio.current_task()
        other = asyncio.get_running_loop().call_later(0.05, task.cancel)
        with pytest.raises(asyncio.CancelledError):  # someone else's cancel stays a cancel
            with deadline(5):
                await asyncio.sleep(5)
        other.cancel()
        if hasattr(task, "uncancel"):
            task.uncancel()
        await asyncio.sleep(0)  # still usable

    asyncio.run(main())


def test_the_api_and_token_commands_say_what_each_option_is():
    import argparse

    from pynomaly_api.cli import build_parser, token_parser

    for parser in (build_parser(), token_parser()):
        assert parser.description
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for p in [parser, *(c for s in subs for c in s.choices.values())]:
            for a in p._actions:
                if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                    assert a.help, f"{p.prog} {a.option_strings or a.dest}"


# -- the audit trail and encrypted homes (issue 15) ---------------------------------------------------
def test_state_changes_and_refusals_over_http_are_in_the_audit_trail(tmp_path):
    home = tmp_path / "home"
    X = cardio()
    service.train(home, "a", X[:500], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    admin, viewer = make_token(home, "admin", user="ann"), make_token(home, "viewer", user="vic")
    server = ApiServer(home)
    try:
        ds = server.json("POST", "/api/v1/datasets?name=rows.npy", _npy(X[:300]), token=admin,
                         headers={"Content-Type": "application/octet-stream"})[1]
        assert server.json("POST", "/api/v1/detectors/b/train", {"dataset_id": ds["id"], "params": {"n_estimators": 5}},
                           token=admin)[0] == 200
        assert server.json("POST", "/api/v1/detect", {"detector": "b", "dataset_id": ds["id"]}, token=admin)[0] == 200
        assert server.json("POST", "/api/v1/detectors/a/archive", token=admin)[0] == 200
        assert server.json("POST", "/api/v1/detectors/nope/archive", token=admin)[0] == 404
        assert server.json("POST", "/api/v1/tokens", {"user": "x", "role": "viewer"}, token=admin)[0] == 201
        assert server.json("DELETE", "/api/v1/detectors/b", token=viewer)[0] == 403
        for _ in range(5):  # a burst of bad tokens: recorded once, the rest counted
            assert server.json("GET", "/api/v1/detectors", token="bad.token.here")[0] == 401
    finally:
        server.stop()
    entries = service.audit_entries(home)
    by_action = {}
    for e in entries:
        by_action.setdefault(e["action"], []).append(e)
    ours = [e for e in entries if e["origin"].startswith("http ")]
    assert {("dataset.store", "ok"), ("train", "ok"), ("detect", "ok"), ("archive", "ok"), ("token.create", "ok")} <= \
        {(e["action"], e["outcome"]) for e in ours}
    assert all(e["actor"] == "token:ann" for e in ours if e["action"] in ("train", "archive", "token.create"))
    failed = [e for e in ours if e["action"] == "archive" and e["target"] == "nope"]
    assert failed and failed[0]["outcome"].startswith("error:")
    refused = [e for e in ours if e["action"] == "refused"]
    assert any(e["actor"] == "token:vic" and e["outcome"] == "forbidden" for e in refused)
    unauth = [e for e in refused if e["outcome"] == "unauthenticated"]
    assert 1 <= len(unauth) <= 2  # the burst of five is rate-limited to one entry a second
    assert service.audit_verify(home)["ok"]
    # The token command records too.
    assert any(e["action"] == "token.create" and e["origin"].startswith("cli ") for e in entries)


def _npy(X) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, X)
    return buf.getvalue()


def test_an_encrypted_home_is_served_with_its_key_and_refused_without(tmp_path):
    pytest.importorskip("cryptography")
    home, key = tmp_path / "home", tmp_path / "kek"
    service.create_key_file(key)
    service.init_home(home, encrypt=True, key=service.key_source(key_file=key))
    X = cardio()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYNOMALY_KEY_FILE", str(key))
        service.train(home, "enc", X, "IsolationForest", {"random_state": 0, "n_estimators": 20})
        want = service.load_for_scoring(home, "enc").detect(X[:50]).scores
        token = make_token(home, "admin")
    out = subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), "api", "--port", "1"],
                         capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                                            if not k.startswith("PYNOMALY_KEY")})
    assert out.returncode == 2 and "encrypted" in out.stderr and "Traceback" not in out.stderr
    server = ApiServer(home, "--key-file", str(key))
    try:
        status, doc = server.json("POST", "/v2/models/enc/infer", infer_body(X[:50]), token=token)
        assert status == 200 and np.array_equal(outputs_of(doc)["scores"], want)
        ds = server.json("POST", "/api/v1/datasets?name=secret.npy", _npy(X[:100]), token=token,
                         headers={"Content-Type": "application/octet-stream"})[1]
        status, det = server.json("POST", "/api/v1/detect", {"detector": "enc", "dataset_id": ds["id"]}, token=token)
        assert status == 200 and det["metrics"]["total_samples"] == 100
    finally:
        server.stop()
    # The upload is sealed like the rest of the home: its name (a sealed field) is nowhere in
    # clear, where a plain home shows it, and its rows open only with the key.
    def holds(root, needle):
        return any(needle in p.read_bytes() for p in root.rglob("*") if p.is_file())

    plain = tmp_path / "plain"
    service.store_dataset(plain, X[:100], "secret.npy")
    assert holds(plain, b"secret.npy")
    assert not holds(home, b"secret.npy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYNOMALY_KEY_FILE", str(key))
        assert np.array_equal(service.dataset_rows(home, ds["id"])[0], X[:100])
    with pytest.raises(pynomaly.PynomalyError, match="encrypted"):
        service.dataset_rows(home, ds["id"])


# -- jobs, metrics and alerts over HTTP (issue 12) -----------------------------------------------------
def test_jobs_over_http_run_in_the_server_and_stream_their_progress(tmp_path):
    home = tmp_path / "home"
    X = cardio()
    ds = service.store_dataset(home, X, "train.npy")
    tokens = {r: make_token(home, r, user=f"{r}-u") for r in ("viewer", "operator", "admin")}
    server = ApiServer(home, "--job-workers", "1")
    try:
        body = {"kind": "train", "params": {"detector": "bg", "dataset_id": ds["id"],
                                            "params": {"n_estimators": 30, "random_state": 2}}}
        assert server.json("POST", "/api/v1/jobs", body, token=tokens["operator"])[0] == 403  # training is admin's
        status, err = server.json("POST", "/api/v1/jobs", {"kind": "train", "params": {"detector": "bg",
                                                                                       "data": "/etc/passwd"}},
                                  token=tokens["admin"])
        assert status == 400 and "dataset_id" in err["error"]  # never a path on the server's machine
        assert server.json("POST", "/api/v1/jobs", {"kind": "train", "params": {"detector": "bg", "dataset_id": "0" * 32}},
                           token=tokens["admin"])[0] == 404
        assert server.json("POST", "/api/v1/jobs", {"kind": "mine", "params": {}}, token=tokens["admin"])[0] == 400
        status, job = server.json("POST", "/api/v1/jobs", body, token=tokens["admin"])
        assert status == 202 and job["state"] == "queued"
        # Server-sent events until it ends.
        status, headers, raw = server.request("GET", f"/api/v1/jobs/{job['id']}/events", token=tokens["viewer"])
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert events and events[-1]["state"] == "succeeded" and events[-1]["id"] == job["id"]
        assert server.json("GET", f"/api/v1/jobs/{job['id']}", token=tokens["viewer"])[1]["state"] == "succeeded"
        assert server.json("GET", "/api/v1/jobs/nope", token=tokens["viewer"])[0] == 404
        want = pynomaly.IsolationForest(n_estimators=30, random_state=2, contamination=0.1).fit(X)
        status, doc = server.json("POST", "/v2/models/bg/infer", infer_body(X[:5]), token=tokens["operator"])
        assert status == 200 and np.array_equal(outputs_of(doc)["scores"], want.decision_function(X[:5]))
        # A detection job, by an operator.
        status, job = server.json("POST", "/api/v1/jobs", {"kind": "detect", "params": {"detector": "bg",
                                                                                       "dataset_id": ds["id"]}},
                                  token=tokens["operator"])
        assert status == 202
        deadline = time.monotonic() + 60
        while (j := server.json("GET", f"/api/v1/jobs/{job['id']}", token=tokens["viewer"])[1])["state"] != "succeeded":
            assert j["state"] in ("queued", "running") and time.monotonic() < deadline, j
            time.sleep(0.2)
        assert [r["id"] for r in server.json("GET", "/api/v1/jobs", token=tokens["viewer"])[1]][:2] == \
            [job["id"], events[-1]["id"]]
    finally:
        server.stop()


def test_metrics_count_every_infer_and_alerts_reach_a_real_receiver(tmp_path):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    from pynomaly.service import alerts

    prom = pytest.importorskip("prometheus_client.parser")
    got = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    home = tmp_path / "home"
    X = cardio()
    service.train(home, "m", X, "IsolationForest", {"n_estimators": 50, "random_state": 0})
    alerts.add_rule(home, "m", "webhook", f"http://127.0.0.1:{hook.server_address[1]}/hook", score_above=0.6)
    token = make_token(home, "operator")
    scorer = service.load_for_scoring(home, "m")
    scores = scorer.score(X)
    normal, odd = X[np.argsort(scores)[:3]], X[np.argsort(scores)[-1:]]
    assert scorer.score(odd)[0] > 0.6 and scorer.score(normal).max() < 0.6
    server = ApiServer(home)
    try:
        for _ in range(4):
            assert server.json("POST", "/v2/models/m/infer", infer_body(normal), token=token)[0] == 200
        assert server.json("POST", "/v2/models/m/infer", infer_body(odd), token=token)[0] == 200
        assert server.request("GET", "/metrics")[0] == 401
        status, headers, raw = server.request("GET", "/metrics", token=token)
        assert status == 200 and headers["content-type"].startswith("text/plain")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in prom.text_string_to_metric_families(raw.decode()) for s in f.samples}
        assert samples[("pynomaly_detections_total", (("detector", "m"),))] == 5
        assert samples[("pynomaly_rows_scored_total", (("detector", "m"),))] == 13
        assert samples[("pynomaly_anomalies_total", (("detector", "m"),))] == int((scorer.score(X[np.argsort(scores)[-1:]]) > scorer.version.threshold).sum())
        assert samples[("pynomaly_requests_total", (("op", "infer"),))] == 5
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.1)
        assert got, "no alert reached the receiver"
        alert = got[0]
        assert alert["status"] == "firing" and alert["alerts"][0]["labels"]["detector"] == "m"
    finally:
        server.stop()
        hook.shutdown()
        hook.server_close()
