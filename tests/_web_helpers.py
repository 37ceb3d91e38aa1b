"""A browser-less client of the web pages for the tests: keeps the cookies a browser would,
reads a page's CSRF token and posts forms (url-encoded or multipart) as a browser does."""

from __future__ import annotations

import html
import re
import subprocess
import sys
import uuid
from typing import Optional
from urllib.parse import urlencode

import numpy as np


class WebClient:
    def __init__(self, server):
        self.server = server
        self.cookies: dict = {}
        self.last_headers: dict = {}

    def _headers(self, extra=None) -> dict:
        h = dict(extra or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return h

    def _keep(self, pairs) -> None:
        for name, value in pairs:
            if name.lower() == "set-cookie":
                k, _, rest = value.partition("=")
                v = rest.split(";")[0]
                if "Max-Age=0" in value:
                    self.cookies.pop(k, None)
                else:
                    self.cookies[k] = v

    def request(self, method: str, path: str, body=None, headers=None, raw: bool = False):
        """``(status, headers, text)`` (bytes with ``raw``); cookies kept; redirects not followed."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=self._headers(headers))
            r = conn.getresponse()
            pairs = r.getheaders()
            h = {k.lower(): v for k, v in pairs}
            self.set_cookie_headers = [v for k, v in pairs if k.lower() == "set-cookie"]
            self._keep(pairs)
            self.last_headers = h
            data = r.read()
            return r.status, h, data if raw else data.decode("utf-8", "replace")
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def csrf(self, path: str = "/") -> str:
        status, _, text = self.get(path)
        m = re.search(r'name="csrf" value="([^"]+)"', text)
        assert m, f"no CSRF token on {path} ({status})"
        return m.group(1)

    def post(self, path: str, fields: dict, files: Optional[dict] = None, headers=None):
        if files is None:
            return self.request("POST", path, urlencode(fields).encode(),
                                {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
        b = uuid.uuid4().hex
        parts = []
        for k, v in fields.items():
            parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        for k, (filename, data) in files.items():
            parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{k}"; filename="{filename}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{b}--\r\n".encode())
        return self.request("POST", path, b"".join(parts),
                            {"Content-Type": f"multipart/form-data; boundary={b}", **(headers or {})})

    def sign_in(self, user: Optional[str] = None, password: Optional[str] = None, token: Optional[str] = None):
        csrf = self.csrf("/")
        fields = {"csrf": csrf, "next": "/ui/detectors"}
        fields.update({"token": token} if token else {"user": user, "password": password})
        return self.post("/ui/signin", fields)


def error_text(page: str) -> Optional[str]:
    """The message a page shows in its error box, unescaped."""
    m = re.search(r'id="error">([^<]*)<', page)
    return html.unescape(m.group(1)) if m else None


def add_user(home, name: str, role: str, password: str) -> None:
    """A user added by the real command (`pynomaly user add ... --password-stdin`)."""
    subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), "user", "add", name, "--role", role,
                    "--password-stdin"], input=password + "\n", capture_output=True, text=True, check=True)


def add_role_users(home, roles, password: str) -> None:
    """A user per role, named by its first three letters: "vie-user", "ope-user", "adm-user"."""
    for role in roles:
        add_user(home, role[:3] + "-user", role, password)


def signed_in(server, role: str, password: str) -> WebClient:
    """A client signed in as the user :func:`add_role_users` made for ``role``."""
    c = WebClient(server)
    assert c.sign_in(role[:3] + "-user", password)[0] == 303
    return c


def to_csv(X: np.ndarray, names=None) -> bytes:
    """X as CSV with a header; floats written shortest-exact, so they read back bit-equal."""
    names = names or [f"x{i}" for i in range(X.shape[1])]
    lines = [",".join(names)] + [",".join(repr(v) for v in row) for row in X.tolist()]
    return ("\n".join(lines) + "\n").encode()
