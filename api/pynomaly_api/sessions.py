"""Signing in to the web pages: users with hashed passwords, the session cookie, CSRF tokens.

Users live in the home folder (``api-users.json``, mode 0600) with scrypt password hashes
(``hashlib.scrypt``: memory-hard, in the standard library); ``pynomaly user add`` manages
them. Signing in gives a session cookie holding a token of the same kind the API takes
(a JWT signed with the home's secret, or the token the person signed in with), so a session
is checked by the same :class:`~pynomaly_api.tokens.Verifier` and has the same roles.

Forms carry a CSRF token: an HMAC, keyed by the home's oldest signing secret, of a random
nonce kept in its own cookie. Another site can neither read that cookie nor compute the HMAC,
so a form it submits in the person's name is refused (SameSite=Strict cookies stop most such
requests before they start; the token covers browsers that do not honour it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from pynomaly._files import atomic_write
from pynomaly._home import local_dir

from .tokens import ANONYMOUS, ROLES, Principal, TokenError, create_token, ensure_secret, read_secrets

USERS_FILE = "api-users.json"
SESSION_COOKIE = "pynomaly_session"
CSRF_COOKIE = "pynomaly_csrf"
SESSION_TTL_S = 12 * 3600  # a password sign-in lasts a working day

# scrypt at N=2**14, r=8, p=1 (16 MB, ~50 ms here): the parameters are stored with each hash,
# so raising them later keeps old hashes readable.
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


# -- users ------------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of ``password``."""
    salt = secrets.token_bytes(16)
    n, r, p = _SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"]
    h = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(h).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` string (constant-time compare)."""
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=len(base64.b64decode(want)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(want))


_DUMMY = None  # a hash checked for unknown users, so that they take as long as known ones


def _users_path(home) -> Path:
    return local_dir(home) / USERS_FILE


def read_users(home) -> dict:
    """``{name: {"role", "password" (hash), "created"}}``; empty when there are none."""
    path = _users_path(home)
    try:
        return json.loads(path.read_text())["users"]
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({e}); restore it or move it aside and add the users again") from None


def add_user(home, name: str, role: str, password: str) -> None:
    """Add a user, or replace an existing one's role and password."""
    if not _USER.fullmatch(name or ""):
        raise ValueError("a user name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    users = read_users(home)
    users[name] = {"role": role, "password": hash_password(password),
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _write_users(home, users)


def remove_user(home, name: str) -> None:
    users = read_users(home)
    if name not in users:
        raise ValueError(f"no user {name!r}")
    del users[name]
    _write_users(home, users)


def _write_users(home, users: dict) -> None:
    local_dir(home).mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(_users_path(home), json.dumps({"users": users}, indent=1).encode(), mode=0o600)


def check_password(home, name: str, password: str) -> Optional[str]:
    """The user's role when ``password`` is theirs, else None (unknown users take as long)."""
    global _DUMMY
    user = read_users(home).get(name)
    if user is None:
        if _DUMMY is None:
            _DUMMY = hash_password(secrets.token_hex(8))
        verify_password(password, _DUMMY)
        return None
    return user["role"] if verify_password(password, user["password"]) else None


class Throttle:
    """Failed password sign-ins per user name, in this process: after ``limit`` failures within
    ``window_s`` the name is refused for ``lockout_s`` (guessing passwords through the page
    becomes slow; the right password does not help while locked)."""

    def __init__(self, limit: int = 5, window_s: float = 300.0, lockout_s: float = 60.0):
        self.limit, self.window_s, self.lockout_s = limit, window_s, lockout_s
        self._failures: dict = {}
        self._locked: dict = {}

    def wait_s(self, name: str) -> float:
        """Seconds until ``name`` may try again (0: now)."""
        until = self._locked.get(name, 0.0)
        return max(0.0, until - time.monotonic())

    def failed(self, name: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 10000:  # names tried at random: forget them rather than grow
            self._failures.clear()
        recent = [t for t in self._failures.get(name, []) if now - t < self.window_s] + [now]
        self._failures[name] = recent
        if len(recent) >= self.limit:
            self._locked[name] = now + self.lockout_s
            self._failures[name] = []

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)
        self._locked.pop(name, None)


# -- sessions ---------------------------------------------------------------------------------
def password_session(home, name: str, role: str, *, issuer: str, audience: str, role_claim: str = "role") -> tuple:
    """``(token, max_age_s)`` of a new session for a user who gave their password."""
    token, _ = create_token(home, name, role, SESSION_TTL_S, issuer=issuer, audience=audience, role_claim=role_claim)
    return token, SESSION_TTL_S


def token_session(home, p: Principal, *, issuer: str, audience: str, role_claim: str = "role") -> tuple:
    """``(token, max_age_s)`` of a new session for someone who signed in with the API token
    ``p``: a token of its own (signing out revokes the session, not the API token a script may
    still use), which ends when that token expires or is revoked (``parent``)."""
    ttl = min(SESSION_TTL_S, session_lifetime(p))
    if ttl <= 0:
        raise TokenError("the token has expired")
    token, _ = create_token(home, p.subject, p.role, ttl, issuer=issuer, audience=audience, role_claim=role_claim,
                            parent=p.jti)
    return token, ttl


def principal(state, request) -> Optional[Principal]:
    """Who the request's session cookie names (ANONYMOUS admin when the server checks no
    tokens), or None when there is no valid session."""
    if state.verifier is None:
        return ANONYMOUS
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return state.verifier.verify(token)
    except TokenError:
        return None


def session_lifetime(p: Principal) -> int:
    """Seconds the cookie for a token-sign-in lives: until the token expires."""
    return max(0, int(p.expires - time.time()))


def cookie(name: str, value: str, *, max_age: int, secure: bool, path: str = "/") -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Strict, Secure when served over TLS."""
    out = f"{name}={value}; Path={path}; Max-Age={int(max_age)}; HttpOnly; SameSite=Strict"
    return out + "; Secure" if secure else out


# -- CSRF -------------------------------------------------------------------------------------
def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def _csrf_key(home) -> bytes:
    keys = read_secrets(home) or ensure_secret(home)
    return hmac.new(keys[0]["secret"], b"pynomaly web csrf", hashlib.sha256).digest()


def csrf_token(home, nonce: str) -> str:
    """The token a form carries for the browser holding ``nonce`` in its CSRF cookie."""
    return hmac.new(_csrf_key(home), nonce.encode(), hashlib.sha256).hexdigest()


def csrf_ok(home, nonce: Optional[str], token: Optional[str]) -> bool:
    if not nonce or not token or not isinstance(token, str):
        return False
    return hmac.compare_digest(csrf_token(home, nonce), token)


__all__ = ["Throttle", "add_user", "remove_user", "read_users", "check_password", "hash_password", "verify_password",
           "password_session", "token_session", "principal", "cookie", "csrf_token", "csrf_ok", "new_nonce", "SESSION_COOKIE",
           "CSRF_COOKIE"]
