"""What a hostile tester did to the served platform (issue 25), against real servers on
loopback: sessions and tokens that outlive sign-out, user removal and revocation; slow and
numerous clients; password guessing and borrowed CSRF tokens; pages that load from other
hosts; the OIP v2 statistics route and the statuses the OpenAPI document declares."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")
pytest.importorskip("jinja2", reason="the http extra is not installed (pip install '.[http]')")

from _http_helpers import ApiServer, make_token  # noqa: E402
from _web_helpers import WebClient, add_user  # noqa: E402

PASSWORD = "correct horse battery"


def pynomaly(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120)


def refused_within(check, seconds: float) -> float:
    """Seconds until ``check()`` is true (polled every 20 ms); fails after ``seconds``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"still accepted after {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory):
    """Two servers on one folder home (as `--workers 2` or two replicas on a shared volume)
    and a user per role."""
    home = tmp_path_factory.mktemp("sechome")
    for role in ("viewer", "admin"):
        add_user(home, role[:3] + "-user", role, PASSWORD)
    servers = [ApiServer(home, "--job-workers", "0") for _ in range(2)]
    try:
        yield servers, home
    finally:
        for s in servers:
            s.stop()


def session_of(client: WebClient) -> str:
    return client.cookies["pynomaly_session"]


def with_cookie(server, cookie: str, path: str = "/ui/detectors") -> int:
    return WebClient(server).request("GET", path, headers={"Cookie": f"pynomaly_session={cookie}"})[0]


# -- 4. sessions and tokens that outlive sign-out and removal -----------------------------------------
def test_a_signed_out_cookie_is_refused_by_pages_and_api_on_every_server(two_servers):
    (a, b), home = two_servers
    c = WebClient(a)
    assert c.sign_in("vie-user", PASSWORD)[0] == 303
    cookie = session_of(c)
    assert with_cookie(a, cookie) == 200 and with_cookie(b, cookie) == 200
    assert a.request("GET", "/api/v1/detectors", token=cookie)[0] == 200
    assert c.post("/ui/signout", {"csrf": c.csrf("/ui/detectors")})[0] == 303
    # A copy of the cookie (stolen, or kept by a browser that ignored the sign-out) is dead.
    assert with_cookie(a, cookie) == 303
    refused_within(lambda: with_cookie(b, cookie) == 303, 1.0)
    assert a.request("GET", "/api/v1/detectors", token=cookie)[0] == 401
    assert b.request("GET", "/api/v1/detectors", token=cookie)[0] == 401


def test_signing_out_of_a_token_sign_in_ends_the_session_not_the_token(two_servers):
    (a, _), home = two_servers
    token = make_token(home, "viewer", user="scripted")
    c = WebClient(a)
    assert c.sign_in(token=token)[0] == 303
    cookie = session_of(c)
    assert cookie != token and with_cookie(a, cookie) == 200
    assert c.post("/ui/signout", {"csrf": c.csrf("/ui/detectors")})[0] == 303
    assert with_cookie(a, cookie) == 303
    assert a.request("GET", "/api/v1/detectors", token=token)[0] == 200  # the script goes on
    # Revoking the token ends the sessions opened with it too.
    c2 = WebClient(a)
    assert c2.sign_in(token=token)[0] == 303
    assert pynomaly(home, "token", "revoke", token).returncode == 0
    refused_within(lambda: with_cookie(a, session_of(c2)) == 303, 1.0)


def test_removing_a_user_ends_their_sessions_on_every_server(two_servers):
    (a, b), home = two_servers
    add_user(home, "leaving", "admin", PASSWORD)
    c = WebClient(a)
    assert c.sign_in("leaving", PASSWORD)[0] == 303
    cookie = session_of(c)
    api_token = make_token(home, "admin", user="leaving")
    assert with_cookie(b, cookie) == 200 and b.request("GET", "/api/v1/detectors", token=api_token)[0] == 200
    r = pynomaly(home, "user", "remove", "leaving")
    assert r.returncode == 0, r.stderr
    for server in (a, b):
        took = refused_within(lambda: with_cookie(server, cookie) == 303, 1.0)
        assert took < 1.0
        assert server.request("GET", "/api/v1/detectors", token=api_token)[0] == 401
    # Added again: a new sign-in works (only what was issued before the removal is refused).
    add_user(home, "leaving", "viewer", PASSWORD)
    c = WebClient(b)
    assert c.sign_in("leaving", PASSWORD)[0] == 303 and with_cookie(a, session_of(c)) == 200


def test_token_revoke_takes_a_token_or_its_id_and_every_server_refuses_it_within_a_second(two_servers):
    (a, b), home = two_servers
    import jwt

    first, second = make_token(home, "viewer", user="bot"), make_token(home, "viewer", user="bot")
    for t in (first, second):
        assert all(s.request("GET", "/api/v1/detectors", token=t)[0] == 200 for s in (a, b))
    r = pynomaly(home, "token", "revoke", first)
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
    jti = jwt.decode(second, options={"verify_signature": False})["jti"]
    assert pynomaly(home, "token", "revoke", jti).returncode == 0
    for server in (a, b):
        for t in (first, second):
            took = refused_within(lambda: server.request("GET", "/v2/models/x", token=t)[0] == 401, 1.0)
            assert took < 1.0
        status, _, body = server.request("GET", "/api/v1/detectors", token=first)
        assert status == 401 and b"revoked" in body
    assert a.request("GET", "/api/v1/detectors", token=make_token(home, "viewer", user="bot"))[0] == 200
    bad = pynomaly(home, "token", "revoke", "not a token")
    assert bad.returncode == 1 and "jti" in bad.stderr and "Traceback" not in bad.stderr
    # --user: every token of the user issued until then ("sign out everywhere").
    third = make_token(home, "viewer", user="bot")
    assert pynomaly(home, "token", "revoke", "--user", "bot").returncode == 0
    refused_within(lambda: b.request("GET", "/api/v1/detectors", token=third)[0] == 401, 1.0)
    assert b.request("GET", "/api/v1/detectors", token=make_token(home, "viewer", user="bot"))[0] == 200
