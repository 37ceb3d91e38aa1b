"""Signing in to the web pages: users with hashed passwords, the session cookie, CSRF tokens.

Users live in the home folder (``api-users.json``, mode 0600) with scrypt password hashes
(``hashlib.scrypt``: memory-hard, in the standard library); ``pynomaly user add`` manages
them. Signing in gives a session cookie holding a token of the same kind the API takes
(a JWT signed with the home's secret, or the token the person signed in with), so a session
is checked by the same :class:`~pynomaly_api.tokens.Verifier` and has the same roles.

Forms carry a CSRF token: an HMAC, keyed by the home's oldest signing secret, of a random
nonce kept in its own cookie and of the session's token id. Another site can neither read that cookie nor compute the HMAC,
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
    """Failed password sign-ins, in this process: backing off, never locking.

    Each client address may fail ``free`` times; after that each failure doubles the wait
    before its next try (``base_s``, then 2, 4... times, at most ``cap_s``), whatever the name.
    Each name backs off the same way over the failures of every client, but that wait applies
    only to the clients that failed on that name: an attacker's guesses slow the attacker down,
    not the person typing the right password elsewhere. Failures are forgotten ``window_s``
    after the last one; a success clears its client's and its name's count.

    Per process: a server started with ``--workers N``, or N replicas, gives a guesser N times
    the rate.
    """

    def __init__(self, free: int = 3, base_s: float = 1.0, cap_s: float = 60.0, window_s: float = 900.0):
        self.free, self.base_s, self.cap_s, self.window_s = free, base_s, cap_s, window_s
        self._clients: dict = {}  # address -> [failures, time of the last]
        self._names: dict = {}  # name -> [failures, time of the last]
        self._tried: dict = {}  # (name, address) -> time of the last failure

    def _wait(self, entry, now: float) -> float:
        if entry is None or now - entry[1] > self.window_s or entry[0] < self.free:
            return 0.0
        return max(0.0, entry[1] + min(self.cap_s, self.base_s * 2 ** (entry[0] - self.free)) - now)

    def wait_s(self, name: str, client: str) -> float:
        """Seconds until ``client`` may try ``name`` (0: now)."""
        now = time.monotonic()
        wait = self._wait(self._clients.get(client), now)
        tried = self._tried.get((name, client))
        if tried is not None and now - tried <= self.window_s:
            wait = max(wait, self._wait(self._names.get(name), now))
        return wait

    def failed(self, name: str, client: str) -> None:
        now = time.monotonic()
        for table in (self._clients, self._names, self._tried):
            if len(table) > 10000:  # names and addresses at random: forget them rather than grow
                table.clear()
        for table, key in ((self._clients, client), (self._names, name)):
            entry = table.get(key)
            count = entry[0] if entry is not None and now - entry[1] <= self.window_s else 0
            table[key] = [count + 1, now]
        self._tried[(name, client)] = now

    def succeeded(self, name: str, client: str) -> None:
        self._clients.pop(client, None)
        self._names.pop(name, None)
        self._tried.pop((name, client), None)


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


def session_id(p: Optional[Principal]) -> str:
    """What a form's CSRF token is bound to: the session's token id ("" before signing in)."""
    return (p.jti or "") if p is not None else ""


def csrf_token(home, nonce: str, session: str = "") -> str:
    """The token a form carries for the browser holding ``nonce`` in its CSRF cookie, in the
    session ``session`` (:func:`session_id`): a token and nonce taken from another session,
    the attacker's own included, do not pass in this one."""
    return hmac.new(_csrf_key(home), f"{nonce}\0{session}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(home, nonce: Optional[str], token: Optional[str], session: str = "") -> bool:
    if not nonce or not token or not isinstance(token, str):
        return False
    return hmac.compare_digest(csrf_token(home, nonce, session), token)


__all__ = ["Throttle", "add_user", "remove_user", "read_users", "check_password", "hash_password", "verify_password",
           "password_session", "token_session", "principal", "cookie", "csrf_token", "csrf_ok", "session_id", "new_nonce", "SESSION_COOKIE",
           "CSRF_COOKIE"]
