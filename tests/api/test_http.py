"""The HTTP face against a real server process: Open Inference Protocol v2 (JSON and binary,
with tritonclient as the real client and with requests built from the specification), the
detection API, tokens and roles, hostile bodies, concurrent clients."""

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


# -- Open Inference Protocol v2 ---------------------------------------------------------------
def test_health_and_server_metadata_are_open(served):
    server = served[0]
    assert server.json("GET", "/v2/health/live") == (200, {"live": True})
    assert server.json("GET", "/v2/health/ready") == (200, {"ready": True})
    status, meta = server.json("GET", "/v2")
    assert status == 200 and meta["name"] == "pynomaly" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_describes_inputs_and_outputs(served):
    server, home, tokens, X, _ = served
    status, meta = server.json("GET", "/v2/models/isolationforest", token=tokens["viewer"])
    assert status == 200
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, X.shape[1]]}]
    assert {(o["name"], o["datatype"]) for o in meta["outputs"]} >= {("scores", "FP64"), ("labels", "BOOL"),
                                                                      ("probabilities", "FP64")}
    assert meta["versions"] == ["1"]
    assert server.json("GET", "/v2/models/isolationforest/versions/1", token=tokens["viewer"])[0] == 200
    assert server.json("GET", "/v2/models/isolationforest/ready", token=tokens["viewer"])[0] == 200
    assert server.json("GET", "/v2/models/nope/ready", token=tokens["viewer"])[0] == 404


@pytest.mark.parametrize("algorithm", [k[0] for k in KINDS])
def test_json_infer_is_bit_equal_to_in_process_scoring(served, algorithm):
    server, home, tokens, X, kinds = served
    if algorithm not in kinds:
        pytest.skip(f"{algorithm}: its extra is not installed")
    name = _name(algorithm)
    want = service.load_for_scoring(home, name).detect(X, ("probabilities",))
    body = infer_body(X, outputs=[{"name": "scores"}, {"name": "labels"}, {"name": "probabilities"}], id="req-7")
    status, doc = server.json("POST", f"/v2/models/{name}/infer", body, token=tokens["operator"])
    assert status == 200, doc
    assert doc["model_name"] == name and doc["model_version"] == "1" and doc["id"] == "req-7"
    out = outputs_of(doc)
    assert np.array_equal(out["scores"], want.scores)  # bit-equal: floats sent shortest-exact
    assert np.array_equal(out["labels"], want.labels.astype(bool))
    assert np.array_equal(out["probabilities"], want.probabilities)


def test_tritonclient_json_and_binary(served):
    th = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    server, home, tokens, X, _ = served
    scorer = service.load_for_scoring(home, "isolationforest")
    client = th.InferenceServerClient(server.url)
    auth = {"Authorization": f"Bearer {tokens['operator']}"}
    # tritonclient adds Inference-Header-Content-Length to the dict it is given and keeps it
    # there: each call gets a fresh one, or a JSON request after a binary one carries a stale
    # header length (which the server rightly refuses).
    headers = dict(auth)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("isolationforest", headers=headers)
    assert client.get_model_metadata("isolationforest", headers=headers)["inputs"][0]["shape"] == [-1, X.shape[1]]
    for binary in (True, False):
        for datatype, dtype in (("FP64", np.float64), ("FP32", np.float32), ("INT32", np.int32)):
            rows = (X * 10).astype(dtype) if datatype == "INT32" else X.astype(dtype)
            inp = th.InferInput("input", list(rows.shape), datatype)
            inp.set_data_from_numpy(rows, binary_data=binary)
            outs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "labels", "probabilities")]
            r = client.infer("isolationforest", [inp], outputs=outs, headers=dict(auth))
            want = scorer.detect(rows.astype(np.float64), ("probabilities",))
            assert np.array_equal(r.as_numpy("scores"), want.scores), (binary, datatype)
            assert np.array_equal(r.as_numpy("labels"), want.labels.astype(bool))
            assert np.array_equal(r.as_numpy("probabilities"), want.probabilities)
    # No outputs named: tritonclient asks for all of them as binary (binary_data_output).
    inp = th.InferInput("input", list(X.shape), "FP64")
    inp.set_data_from_numpy(X)
    r = client.infer("isolationforest", [inp], headers=dict(auth), model_version="1")
    assert np.array_equal(r.as_numpy("scores"), scorer.detect(X).scores)
    # Compressed requests, as tritonclient sends them.
    r = client.infer("isolationforest", [inp], headers=dict(auth), request_compression_algorithm="gzip")
    assert np.array_equal(r.as_numpy("scores"), scorer.detect(X).scores)
    with pytest.raises(th.InferenceServerException, match="401"):
        client.infer("isolationforest", [inp])
    client.close()


def test_binary_request_built_from_the_specification(served):
    server, home, tokens, X, _ = served
    head = json.dumps({
        "inputs": [{"name": "x", "shape": list(X.shape), "datatype": "FP64",
                    "parameters": {"binary_data_size": X.nbytes}}],
        "outputs": [{"name": "scores", "parameters": {"binary_data": True}}, {"name": "labels"}],
    }).encode()
    status, headers, body = server.request(
        "POST", "/v2/models/isolationforest/infer", head + X.astype("<f8").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
        token=tokens["operator"])
    assert status == 200, body
    n = int(headers["inference-header-content-length"])
    doc = json.loads(body[:n])
    size = doc["outputs"][0]["parameters"]["binary_data_size"]
    scores = np.frombuffer(body[n:n + size], dtype="<f8")
    want = service.load_for_scoring(home, "isolationforest").detect(X)
    assert np.array_equal(scores, want.scores) and len(body) == n + size
    assert np.array_equal(np.asarray(doc["outputs"][1]["data"]), want.labels.astype(bool))


def test_threshold_and_contamination_parameters(served):
    server, home, tokens, X, _ = served
    scorer = service.load_for_scoring(home, "isolationforest")
    for params in ({"threshold": 0.5}, {"contamination": 0.2}):
        status, doc = server.json("POST", "/v2/models/isolationforest/infer", infer_body(X, parameters=params),
                                  token=tokens["operator"])
        assert status == 200
        want = scorer.detect(X, **params)
        assert np.array_equal(outputs_of(doc)["labels"], want.labels.astype(bool))


@pytest.mark.parametrize("case", [
    "not_json", "no_inputs", "two_inputs", "unknown_datatype", "bytes_datatype", "wrong_features", "count_mismatch",
    "huge_shape", "negative_shape", "three_dims", "strings", "nan_binary", "truncated_binary", "header_past_body",
    "header_not_int", "wrong_byte_count", "extra_bytes", "binary_without_header", "unknown_output", "bad_threshold",
    "ragged", "int_out_of_range",
])
def test_hostile_infer_bodies_get_400_with_a_reason(served, case):
    server, home, tokens, X, _ = served
    t = tokens["operator"]
    d = X.shape[1]
    row = X[:2]

    def binary_head(shape, size, datatype="FP64"):
        return json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype,
                                       "parameters": {"binary_data_size": size}}]}).encode()

    raw = row.astype("<f8").tobytes()
    cases = {
        "not_json": (b"{not json", b"", None),
        "no_inputs": (json.dumps({"inputs": []}).encode(), b"", None),
        "two_inputs": (json.dumps({"inputs": infer_body(row)["inputs"] * 2}).encode(), b"", None),
        "unknown_datatype": (json.dumps(infer_body(row, "FP128")).encode(), b"", None),
        "bytes_datatype": (json.dumps(infer_body(row, "BYTES")).encode(), b"", None),
        "wrong_features": (json.dumps(infer_body(X[:2, :5])).encode(), b"", None),
        "count_mismatch": (json.dumps({"inputs": [{"name": "x", "shape": [3, d], "datatype": "FP64",
                                                   "data": row.reshape(-1).tolist()}]}).encode(), b"", None),
        "huge_shape": (binary_head([10 ** 15, d], 8 * d * 10 ** 15), raw, None),
        "negative_shape": (json.dumps({"inputs": [{"name": "x", "shape": [-1, d], "datatype": "FP64",
                                                   "data": row.reshape(-1).tolist()}]}).encode(), b"", None),
        "three_dims": (json.dumps({"inputs": [{"name": "x", "shape": [1, 2, d], "datatype": "FP64",
                                               "data": row.reshape(-1).tolist()}]}).encode(), b"", None),
        "strings": (json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64",
                                            "data": ["a", "b"]}]}).encode(), b"", None),
        "nan_binary": (binary_head([2, d], len(raw)), np.full((2, d), np.nan).tobytes(), "auto"),
        "truncated_binary": (binary_head([2, d], len(raw)), raw[:-5], "auto"),
        "header_past_body": (binary_head([2, d], len(raw)), raw, 10 ** 6),
        "header_not_int": (binary_head([2, d], len(raw)), raw, "12abc"),
        "wrong_byte_count": (binary_head([2, d], len(raw) - 8), raw[:-8], "auto"),
        "extra_bytes": (binary_head([2, d], len(raw)), raw + b"xx", "auto"),
        "binary_without_header": (binary_head([2, d], len(raw)), raw, None),
        "unknown_output": (json.dumps(infer_body(row, outputs=[{"name": "secrets"}])).encode(), b"", None),
        "bad_threshold": (json.dumps(infer_body(row, parameters={"threshold": "high"})).encode(), b"", None),
        "ragged": (json.dumps({"inputs": [{"name": "x", "shape": [2, d], "datatype": "FP64",
                                           "data": [[1.0] * d, [1.0] * (d - 1)]}]}).encode(), b"", None),
        "int_out_of_range": (json.dumps({"inputs": [{"name": "x", "shape": [1, d], "datatype": "INT8",
                                                     "data": [300] * d}]}).encode(), b"", None),
    }
    head, tail, hlen = cases[case]
    if hlen == "auto":
        hlen = len(head)
    status, headers, body = _raw_infer(server, t, head, tail, hlen)
    assert status == 400, (case, status, body)
    msg = json.loads(body)["error"]
    assert msg and "Traceback" not in msg
    # ... and the server keeps serving.
    assert server.json("POST", "/v2/models/isolationforest/infer", infer_body(row), token=t)[0] == 200


def test_not_found_too_large_and_wrong_content_type(served):
    server, home, tokens, X, _ = served
    t = tokens["operator"]
    body = infer_body(X[:1])
    assert server.json("POST", "/v2/models/nope/infer", body, token=t)[0] == 404
    assert server.json("POST", "/v2/models/isolationforest/versions/9/infer", body, token=t)[0] == 404
    assert server.json("POST", "/v2/models/isolationforest/versions/x1/infer", body, token=t)[0] == 400
    assert server.json("POST", "/v2/models/..%2F..%2Fetc/infer", body, token=t)[0] == 404
    big = b"{" + b" " * (9 * 1024 * 1024) + b"}"  # the fixture's server accepts 8M
    status, _, raw = server.request("POST", "/v2/models/isolationforest/infer", big, token=t)
    assert status == 413 and b"at most" in raw
    bomb = gzip.compress(b" " * (20 * 1024 * 1024))
    status, _, raw = server.request("POST", "/v2/models/isolationforest/infer", bomb,
                                    headers={"Content-Encoding": "gzip"}, token=t)
    assert status == 413 and b"decompressed" in raw
    status, _, raw = server.request("POST", "/v2/models/isolationforest/infer", b"a,b\n1,2\n",
                                    headers={"Content-Type": "text/csv"}, token=t)
    assert status == 415
    status, _, raw = server.request("POST", "/v2/models/isolationforest/infer", b"{}",
                                    headers={"Content-Encoding": "br"}, token=t)
    assert status == 415


def test_concurrent_clients_each_get_their_own_answer(served):
    server, home, tokens, X, _ = served
    scorer = service.load_for_scoring(home, "isolationforest")

    def one(i):
        rows = X[i % 50: i % 50 + 1 + i % 7]
        status, doc = server.json("POST", "/v2/models/isolationforest/infer", infer_body(rows),
                                  token=tokens["operator"])
        return status, outputs_of(doc)["scores"], scorer.detect(rows).scores

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for status, got, want in pool.map(one, range(200)):
            assert status == 200 and np.array_equal(got, want)


# -- tokens ------------------------------------------------------------------------------------
def _claims(**over):
    now = int(time.time())
    c = {"sub": "mallory", "role": "admin", "iat": now, "nbf": now, "exp": now + 600, "iss": "pynomaly",
         "aud": "pynomaly-api"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def _secret(home):
    keys = json.loads((home / "api-keys.json").read_text())["keys"]
    import base64

    return keys[-1]["kid"], base64.b64decode(keys[-1]["secret"])


@pytest.mark.parametrize("case", ["expired", "not_yet", "tampered", "wrong_key", "wrong_audience", "wrong_issuer",
                                  "alg_none", "unknown_kid", "no_exp", "bad_role", "garbage", "not_bearer", "missing"])
def test_bad_tokens_get_401(served, case):
    server, home, tokens, X, _ = served
    kid, secret = _secret(home)
    sign = lambda claims, key=secret, alg="HS256", k=kid: jwt.encode(claims, key, algorithm=alg, headers={"kid": k})  # noqa: E731
    good = tokens["admin"]
    header = None
    if case == "expired":
        token = sign(_claims(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200))
    elif case == "not_yet":
        token = sign(_claims(nbf=int(time.time()) + 3600))
    elif case == "tampered":
        h, p, s = good.split(".")
        claims = json.loads(jwt.utils.base64url_decode(p))
        claims["role"] = "admin"
        claims["sub"] = "someone-else"
        token = ".".join([h, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(), s])
    elif case == "wrong_key":
        token = sign(_claims(), key=b"k" * 32)
    elif case == "wrong_audience":
        token = sign(_claims(aud="another-service"))
    elif case == "wrong_issuer":
        token = sign(_claims(iss="someone"))
    elif case == "alg_none":
        token = jwt.encode(_claims(), None, algorithm="none", headers={"kid": kid})
    elif case == "unknown_kid":
        token = sign(_claims(), k="0000")
    elif case == "no_exp":
        token = sign(_claims(exp=None))
    elif case == "bad_role":
        token = sign(_claims(role="root"))
    elif case == "garbage":
        token = "not.a.token"
    elif case == "not_bearer":
        token, header = None, f"Basic {good}"
    else:
        token = None
    headers = {"Authorization": header} if header else {}
    status, hdrs, body = server.request("GET", "/api/v1/detectors", headers=headers, token=token)
    assert status == 401, (case, body)
    assert "bearer" in hdrs.get("www-authenticate", "").lower()
    assert json.loads(body)["error"]
    status, _, _ = server.request("POST", "/v2/models/isolationforest/infer", json.dumps(infer_body(X[:1])).encode(),
                                  headers=headers, token=token)
    assert status == 401


def test_algorithm_confusion_with_a_public_key_is_refused(tmp_path):
    """A server that accepts an identity provider's RS256 key refuses HS256 tokens 'signed'
    with that public key's bytes (the classic confusion), and accepts the provider's own."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    pems = {}
    for kid, key in (("idp-rsa", rsa_key), ("idp-ed", ed_key)):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (tmp_path / f"{kid}.pem").write_bytes(pem)
        pems[kid] = pem
    home = tmp_path / "home"
    service.train(home, "d", cardio()[:300], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    server = ApiServer(home, "--jwt-public-key", str(tmp_path / "idp-rsa.pem"), "--jwt-public-key",
                       f"idp-ed={tmp_path / 'idp-ed.pem'}", "--jwt-issuer", "https://idp.example",
                       "--jwt-audience", "detectors")
    try:
        claims = _claims(iss="https://idp.example", aud="detectors", role="viewer")
        ok_rsa = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "idp-rsa"})
        ok_ed = jwt.encode(claims, ed_key, algorithm="EdDSA", headers={"kid": "idp-ed"})
        assert server.request("GET", "/api/v1/detectors", token=ok_rsa)[0] == 200
        assert server.request("GET", "/api/v1/detectors", token=ok_ed)[0] == 200
        import hmac, hashlib, base64  # noqa: E401 - the attack, by hand (PyJWT refuses to sign it)

        def b64(b):
            return base64.urlsafe_b64encode(b).rstrip(b"=")

        head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "idp-rsa"}).encode())
        body = b64(json.dumps(dict(claims, role="admin")).encode())
        sig = b64(hmac.new(pems["idp-rsa"], head + b"." + body, hashlib.sha256).digest())
        forged = b".".join([head, body, sig]).decode()
        status, _, raw = server.request("GET", "/api/v1/detectors", token=forged)
        assert status == 401 and b"algorithm" in raw
        # The home's own tokens name another issuer and audience than this server requires.
        assert server.request("GET", "/api/v1/detectors", token=make_token(home, "viewer"))[0] == 401
    finally:
        server.stop()


def test_secret_file_is_private_and_rotation_keeps_old_tokens_until_retired(tmp_path):
    home = tmp_path / "home"
    service.train(home, "d", cardio()[:300], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    old = make_token(home, "viewer")
    assert stat.S_IMODE(os.stat(home / "api-keys.json").st_mode) == 0o600
    server = ApiServer(home)
    try:
        assert server.request("GET", "/api/v1/detectors", token=old)[0] == 200
        old_kid = jwt.get_unverified_header(old)["kid"]
        subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), "token", "rotate"], check=True,
                       capture_output=True)
        new = make_token(home, "viewer")
        assert jwt.get_unverified_header(new)["kid"] != old_kid
        assert server.request("GET", "/api/v1/detectors", token=new)[0] == 200  # no restart needed
        assert server.request("GET", "/api/v1/detectors", token=old)[0] == 200
        subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), "token", "rotate", "--retire", old_kid],
                       check=True, capture_output=True)
        time.sleep(1.2)  # the server looks at the keys file at most once a second
        assert server.request("GET", "/api/v1/detectors", token=old)[0] == 401
        assert server.request("GET", "/api/v1/detectors", token=new)[0] == 200
        assert stat.S_IMODE(os.stat(home / "api-keys.json").st_mode) == 0o600
    finally:
        server.stop()


def test_token_command_prints_the_token_alone_on_its_last_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(tmp_path), "token", "create", "--user",
                          "ci", "--role", "operator", "--ttl", "15m"], capture_output=True, text=True, check=True)
    token = out.stdout.strip().splitlines()[-1]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "ci" and claims["role"] == "operator" and 850 < claims["exp"] - claims["iat"] <= 900
    bad = subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(tmp_path), "token", "create", "--user",
                          "ci", "--role", "operator", "--ttl", "forever"], capture_output=True, text=True)
    assert bad.returncode != 0 and "duration" in bad.stderr and "Traceback" not in bad.stderr


def test_open_network_without_authentication_is_refused(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(tmp_path), "api", "--no-auth", "--host",
                          "0.0.0.0", "--port", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "without authentication" in out.stderr and "Traceback" not in out.stderr


def test_no_auth_on_loopback_serves_everyone_as_admin(tmp_path):
    home = tmp_path / "home"
    service.train(home, "d", cardio()[:300], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    server = ApiServer(home, "--no-auth")
    try:
        assert server.json("GET", "/api/v1/detectors")[0] == 200
        assert server.json("POST", "/api/v1/detectors/d/archive")[0] == 200
    finally:
        server.stop()


# -- roles: every role against every endpoint ------------------------------------------------------
ENDPOINTS = [
    # (method, path, body, action)
    ("GET", "/v2/models/isolationforest", None, "read"),
    ("GET", "/v2/models/isolationforest/ready", None, "read"),
    ("POST", "/v2/models/isolationforest/infer", "infer", "detect"),
    ("GET", "/api/v1/detectors", None, "read"),
    ("GET", "/api/v1/detectors/isolationforest", None, "read"),
    ("GET", "/api/v1/detectors/isolationforest/versions", None, "read"),
    ("GET", "/api/v1/detectors/isolationforest/results", None, "read"),
    ("GET", "/api/v1/datasets", None, "read"),
    ("GET", "/api/v1/stats", None, "read"),
    ("POST", "/api/v1/detect", "detect", "detect"),
    ("POST", "/api/v1/datasets?name=rows.csv", "csv", "upload"),
    ("POST", "/api/v1/detectors/roles-target/train", "train", "train"),
    ("POST", "/api/v1/detectors/roles-target/archive", None, "manage"),
    ("POST", "/api/v1/detectors/roles-target/activate", None, "manage"),
    ("GET", "/api/v1/detectors/roles-target/export", None, "manage"),
    ("POST", "/api/v1/tokens", "token", "tokens"),
    ("DELETE", "/api/v1/detectors/roles-target", None, "manage"),
]
ALLOWED = {"viewer": {"read"}, "operator": {"read", "detect", "upload"},
           "admin": {"read", "detect", "upload", "train", "manage", "tokens"}}


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_role_against_every_endpoint(served, role):
    server, home, tokens, X, _ = served
    ds = service.store_dataset(home, X, "roles.npy")
    service.train(home, "roles-target", X, "IsolationForest", {"n_estimators": 5, "random_state": 0})
    bodies = {
        "infer": json.dumps(infer_body(X[:2])).encode(),
        "detect": json.dumps({"detector": "isolationforest", "data": X[:3].tolist(), "save": False}).encode(),
        "csv": b"a,b\n1,2\n3,4\n",
        "train": json.dumps({"dataset_id": ds["id"], "params": {"n_estimators": 5}}).encode(),
        "token": json.dumps({"user": "x", "role": "viewer"}).encode(),
    }
    types = {"csv": "text/csv"}
    for method, path, body, action in ENDPOINTS:
        headers = {"Content-Type": types.get(body, "application/json")} if body else {}
        status, _, raw = server.request(method, path, bodies.get(body), headers=headers, token=tokens[role])
        if action in ALLOWED[role]:
            assert status in (200, 201), (role, method, path, status, raw[:300])
        else:
            assert status == 403, (role, method, path, status, raw[:300])
            assert role in json.loads(raw)["error"]
