"""Web users and CSRF tokens (pynomaly_api.sessions): scrypt hashes, the users file's mode,
the `pynomaly user` command, tokens bound to the browser's nonce and the home's secret."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

pytest.importorskip("jwt", reason="the http extra is not installed (pip install '.[http]')")

from pynomaly_api import sessions  # noqa: E402


def test_password_hashes_are_salted_scrypt_and_verify_only_the_password():
    a, b = sessions.hash_password("a long password"), sessions.hash_password("a long password")
    assert a != b and a.startswith("scrypt$") and "a long password" not in a
    assert sessions.verify_password("a long password", a) and sessions.verify_password("a long password", b)
    assert not sessions.verify_password("a long passwore", a)
    assert not sessions.verify_password("x", "not a hash") and not sessions.verify_password("x", "md5$1$2$3$4$5")


def test_users_file_is_private_and_roles_come_from_it(tmp_path):
    sessions.add_user(tmp_path, "ann", "admin", "password-1")
    assert stat.S_IMODE((tmp_path / sessions.USERS_FILE).stat().st_mode) == 0o600
    assert sessions.check_password(tmp_path, "ann", "password-1") == "admin"
    assert sessions.check_password(tmp_path, "ann", "password-2") is None
    assert sessions.check_password(tmp_path, "bob", "password-1") is None
    sessions.add_user(tmp_path, "ann", "viewer", "password-3")  # replaced: new role and password
    assert sessions.check_password(tmp_path, "ann", "password-3") == "viewer"
    assert sessions.check_password(tmp_path, "ann", "password-1") is None
    for name, role, pw in (("", "admin", "password-1"), ("a b", "admin", "password-1"),
                           ("ann", "root", "password-1"), ("ann", "admin", "short")):
        with pytest.raises(ValueError):
            sessions.add_user(tmp_path, name, role, pw)
    sessions.remove_user(tmp_path, "ann")
    assert sessions.read_users(tmp_path) == {}


def test_user_command_adds_lists_and_removes(tmp_path):
    def run(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(tmp_path), "user", *args],
                              input=stdin, capture_output=True, text=True)

    r = run("add", "ann", "--role", "operator", "--password-stdin", stdin="password-1\n")
    assert r.returncode == 0, r.stderr
    assert sessions.check_password(tmp_path, "ann", "password-1") == "operator"
    out = run("list").stdout
    assert "ann  operator" in out and "scrypt" not in out
    r = run("add", "bob", "--role", "admin", "--password-stdin", stdin="short\n")
    assert r.returncode == 1 and "at least 8" in r.stderr and "Traceback" not in r.stderr
    assert run("remove", "ann").returncode == 0 and sessions.read_users(tmp_path) == {}


def test_csrf_tokens_are_bound_to_the_nonce_the_session_and_the_home(tmp_path):
    other = tmp_path / "other"
    t = sessions.csrf_token(tmp_path, "nonce-1", "session-a")
    assert sessions.csrf_ok(tmp_path, "nonce-1", t, "session-a")
    assert not sessions.csrf_ok(tmp_path, "nonce-1", t, "session-b") and not sessions.csrf_ok(tmp_path, "nonce-1", t)
    assert not sessions.csrf_ok(tmp_path, "nonce-2", t, "session-a")
    assert not sessions.csrf_ok(other, "nonce-1", t, "session-a")
    assert not sessions.csrf_ok(tmp_path, None, t) and not sessions.csrf_ok(tmp_path, "nonce-1", None)


def test_cookies_are_http_only_strict_and_secure_over_tls():
    c = sessions.cookie("s", "v", max_age=60, secure=False)
    assert "HttpOnly" in c and "SameSite=Strict" in c and "Secure" not in c
    assert sessions.cookie("s", "v", max_age=60, secure=True).endswith("; Secure")


def test_throttle_backs_off_per_client_and_per_name_for_the_clients_that_failed_on_it():
    t = sessions.Throttle(free=2, base_s=10, cap_s=30)
    t.failed("ann", "a"), t.failed("ann", "a")
    assert 9 < t.wait_s("ann", "a") <= 10 and 9 < t.wait_s("bob", "a") <= 10  # the client waits, any name
    assert t.wait_s("ann", "b") == 0  # another client: the name's wait is not for it
    t.failed("ann", "a")
    assert 19 < t.wait_s("ann", "a") <= 20
    t.failed("ann", "a")
    assert 29 < t.wait_s("ann", "a") <= 30  # capped
    t.failed("ann", "c")  # a second address that failed on ann waits for ann's back-off
    assert 29 < t.wait_s("ann", "c") <= 30 and t.wait_s("bob", "c") == 0
    t.succeeded("ann", "b")
    assert t.wait_s("ann", "c") == 0 and t.wait_s("ann", "a") > 0  # a's own failures still count
