"""A real HTTP server process for the tests (``python -m pynomaly api`` on a free loopback
port) and a plain HTTP client built on the standard library, so requests can be made exactly
as the specification says, hostile ones included."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from pynomaly import service

from _daemon_helpers import cardio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """``pynomaly api`` serving ``home`` on 127.0.0.1 (extra command-line ``args`` appended)."""

    def __init__(self, home, *args: str, log: Optional[Path] = None):
        """``home``: a folder, or a database URL (then ``log`` is required)."""
        from pynomaly.store._home import is_database_url

        self.home = home if is_database_url(home) else Path(home)
        self.log = log or self.home.parent / f"api-{time.monotonic_ns()}.log"
        self._log_file = open(self.log, "a")
        for _ in range(3):  # the free port may be taken between the check and the bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pynomaly", "--home", str(home), "api", "--port", str(self.port), *args],
                stdout=self._log_file, stderr=subprocess.STDOUT,
            )
            if self._wait_ready():
                return
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()
        raise RuntimeError(f"the API server did not start: {self.log.read_text()[-3000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.request("GET", "/v2/health/live")[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body=None, headers=None, token: Optional[str] = None,
                timeout: float = 60):
        """``(status, headers dict (lower-case names), body bytes)``."""
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body=None, token: Optional[str] = None, headers=None):
        """``(status, decoded JSON body)``."""
        status, _, raw = self.request(method, path, body, headers=headers, token=token)
        return status, json.loads(raw) if raw else None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log_file.close()

    def log_text(self) -> str:
        return self.log.read_text()


def make_token(home, role: str, user: str = "tester", ttl: str = "1h") -> str:
    """A token from the real command (`pynomaly token create`), its last line."""
    out = subprocess.run(
        [sys.executable, "-m", "pynomaly", "--home", str(home), "token", "create", "--user", user, "--role", role,
         "--ttl", ttl],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip().splitlines()[-1]


# -- one server for a test module: a home with every available kind of detector -------------------
KINDS = [
    ("IsolationForest", {"n_estimators": 50, "random_state": 0}, None),
    ("LOF", {"n_neighbors": 10, "novelty": True}, None),
    ("KNN", {"n_neighbors": 5}, None),
    ("pyod.ECOD", {}, "pyod"),
    ("TorchAutoEncoder", {"epochs": 2, "random_state": 0}, "torch"),
    ("JaxDeepSVDD", {"epochs": 2, "random_state": 0}, "jax"),
]


def _name(algorithm: str) -> str:
    return algorithm.replace(".", "-").lower()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A home with every available kind of detector, a server on it, and a token per role."""
    X = cardio()
    home = tmp_path_factory.mktemp("home")
    kinds = []
    for algorithm, params, module in KINDS:
        if module is not None:
            try:
                __import__(module)
            except ImportError:
                continue
        service.train(home, _name(algorithm), X[:1500], algorithm, params)
        kinds.append(algorithm)
    tokens = {role: make_token(home, role, user=f"{role}-user") for role in ("viewer", "operator", "admin")}
    server = ApiServer(home, "--max-body", "8M")
    try:
        yield server, home, tokens, X[1500:1700], kinds
    finally:
        server.stop()


def infer_body(X, datatype="FP64", name="input", **extra) -> dict:
    return {"inputs": [{"name": name, "shape": list(X.shape), "datatype": datatype, "data": X.reshape(-1).tolist()}],
            **extra}


def outputs_of(doc) -> dict:
    return {o["name"]: np.asarray(o["data"]) for o in doc["outputs"]}


def _raw_infer(server, token, head: bytes, tail: bytes = b"", hlen=None, **headers):
    h = dict(headers)
    if hlen is not None:
        h["Inference-Header-Content-Length"] = str(hlen)
    return server.request("POST", "/v2/models/isolationforest/infer", head + tail, headers=h, token=token)
