"""Tokens and roles: who may call the HTTP API, and what each role may do.

Tokens are JWTs (PyJWT). By default the server signs and checks them with HS256 secrets kept
in the home folder (``api-keys.json``, mode 0600); each secret has a ``kid`` so that a new one
can be added (``pynomaly token rotate``) while tokens signed with the old one stay valid until
it is retired. Tokens issued by an identity provider are checked with its public keys
(RS256, ES256/ES384, EdDSA), configured per server.

Every token is checked for its signature, ``exp`` (required), ``nbf``, ``iss``, ``aud``, a
``sub`` and a known ``role``. The algorithm is the key's, never the token's: a token whose
header names another algorithm (``none``, or HS256 over a public key) is refused.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import jwt

from pynomaly.store._files import atomic_write
from pynomaly.store._home import local_dir

ROLES = ("viewer", "operator", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}

# What each action needs, at least. viewer: list, show, results; operator: + detect, infer,
# upload datasets; admin: everything (train, archive, activate, delete, import, export, tokens).
PERMISSIONS = {
    "read": "viewer",
    "detect": "operator",
    "learn": "operator",  # a streaming detector learning from the rows it scores (issue 23)
    "upload": "operator",
    "train": "admin",
    "manage": "admin",
    "tokens": "admin",
}

KEYS_FILE = "api-keys.json"
DEFAULT_ISSUER = "pynomaly"
DEFAULT_AUDIENCE = "pynomaly-api"
LEEWAY_S = 30  # clock skew allowed on exp and nbf


# How a user gets a token this server accepts, named in the messages that refuse one.
_MAKE_ONE = "`pynomaly token create --home HOME --user NAME --role viewer|operator|admin`"


class TokenError(Exception):
    """A token that does not authenticate anyone (HTTP 401)."""


class ForbiddenError(Exception):
    """An authenticated caller whose role may not do this (HTTP 403)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject and role (``expires`` is a Unix time); ``jti``, the
    token's id, ``issued_at`` its ``iat`` and ``parent`` the id of the token a web session was
    opened with: what revocation looks at (any may be None for an identity provider's token)."""

    subject: str
    role: str
    expires: float
    jti: Optional[str] = None
    issued_at: Optional[float] = None
    parent: Optional[str] = None

    def may(self, action: str) -> bool:
        return _RANK[self.role] >= _RANK[PERMISSIONS[action]]

    def require(self, action: str) -> None:
        if not self.may(action):
            raise ForbiddenError(f"role {self.role!r} may not {action} (needs {PERMISSIONS[action]!r} or above)")


ANONYMOUS = Principal("anonymous", "admin", float("inf"))  # authentication switched off


def parse_ttl(text: str) -> int:
    """Seconds in a duration such as ``90s``, ``15m``, ``24h``, ``30d`` (a bare number is seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = str(text).strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 24h, 30d)") from None
    if not (0 < value <= 366 * 86400):
        raise ValueError(f"a token's lifetime must be more than 0 and at most 366 days, got {text!r}")
    return int(value)


# -- the home's secrets ---------------------------------------------------------------------
def _keys_path(home: Path) -> Path:
    return local_dir(home) / KEYS_FILE


def read_secrets(home: Path) -> list:
    """The home's signing secrets, oldest first: ``[{"kid", "secret" (bytes), "created"}]``."""
    path = _keys_path(home)
    try:
        raw = json.loads(path.read_text())
        return [dict(k, secret=base64.b64decode(k["secret"])) for k in raw["keys"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as e:
        raise TokenError(f"{path} is damaged ({e}); restore it, or move it aside and create new tokens") from None


def _write_secrets(home: Path, keys: list) -> None:
    body = {"keys": [dict(k, secret=base64.b64encode(k["secret"]).decode()) for k in keys]}
    atomic_write(_keys_path(home), json.dumps(body, indent=1).encode(), mode=0o600)


def _new_secret() -> dict:
    return {"kid": uuid.uuid4().hex[:16], "secret": secrets.token_bytes(32),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def ensure_secret(home: Path) -> list:
    """The home's secrets, creating the first one (mode 0600) when there is none."""
    keys = read_secrets(home)
    if not keys:
        local_dir(home).mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = [_new_secret()]
        _write_secrets(home, keys)
    return keys


def rotate(home: Path, retire: Sequence[str] = ()) -> list:
    """Add a new signing secret (new tokens use it; old ones stay valid) and remove the
    secrets named in ``retire`` (their tokens stop working). Returns the secrets' kids."""
    keys = ensure_secret(home)
    unknown = set(retire) - {k["kid"] for k in keys}
    if unknown:
        raise ValueError(f"no signing key {sorted(unknown)!r}; keys: {[k['kid'] for k in keys]}")
    keys = [k for k in keys if k["kid"] not in set(retire)] + [_new_secret()]
    _write_secrets(home, keys)
    return [k["kid"] for k in keys]


def create_token(home: Path, user: str, role: str, ttl_s: int = 86400, *, issuer: str = DEFAULT_ISSUER,
                 audience: str = DEFAULT_AUDIENCE, role_claim: str = "role",
                 parent: Optional[str] = None) -> Tuple[str, datetime]:
    """A token for ``user`` with ``role``, signed with the home's newest secret; returns it
    and when it expires. ``parent``: the id of the token a web session is opened with (the
    session is refused once that token is revoked)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not isinstance(user, str) or not user.strip() or len(user) > 200:
        raise ValueError("a token needs a user name (1 to 200 characters)")
    key = ensure_secret(home)[-1]
    now = time.time()
    # iat to the millisecond: a user removed (every token issued until then revoked) and added
    # again within the same second must be able to sign in.
    claims = {"sub": user, "role": role, "iat": round(now, 3), "nbf": int(now), "exp": int(now) + int(ttl_s),
              "iss": issuer, "aud": audience, "jti": uuid.uuid4().hex}
    claims[role_claim] = role
    if parent is not None:
        claims["parent"] = parent
    token = jwt.encode(claims, key["secret"], algorithm="HS256", headers={"kid": key["kid"]})
    return token, datetime.fromtimestamp(claims["exp"], timezone.utc)


def token_id(text: str) -> Tuple[str, Optional[float]]:
    """``(jti, exp)`` of a whole token, read without checking it (to revoke it: revoking a
    forged token harms no one), or ``(text, None)`` for a bare token id."""
    text = (text or "").strip()
    if text.count(".") != 2:
        if not text or len(text) > 200 or not text.isprintable() or " " in text:
            raise ValueError("give a whole token (three dot-separated parts) or a token id (its jti)")
        return text, None
    try:
        claims = jwt.decode(text, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise ValueError(f"not a readable token: {e}") from None
    jti, exp = claims.get("jti"), claims.get("exp")
    if not isinstance(jti, str) or not jti:
        raise ValueError("this token has no id (jti) to revoke: revoke its user instead (--user)")
    return jti, float(exp) if isinstance(exp, (int, float)) else None


# -- checking tokens ------------------------------------------------------------------------
def _public_key(path: Path):
    """A public key from a PEM file and the one algorithm its tokens may use."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read a PEM public key from {path}: {e}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        algs = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name not in algs:
            raise ValueError(f"{path}: EC curve {key.curve.name} is not accepted (P-256, P-384, P-521)")
        return key, algs[key.curve.name]
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key, "EdDSA"
    raise ValueError(f"{path}: unsupported public key type {type(key).__name__}")


class Verifier:
    """Checks tokens for one server: the home's secrets (re-read when the file changes, so a
    rotation needs no restart) and any configured public keys (``{kid: path}``).

    Checked tokens are remembered until they expire (a signature check costs tens of
    microseconds, more than scoring a row); the memory is emptied when the keys change.
    """

    _MEMORY = 4096

    def __init__(self, home: Path, public_keys: Optional[Dict[str, str]] = None, *, issuer: str = DEFAULT_ISSUER,
                 audience: str = DEFAULT_AUDIENCE, role_claim: str = "role", secrets_enabled: bool = True,
                 revocations=None):
        self.home = local_dir(home)  # the secrets live there (a database home has no folder)
        self.revocations = revocations  # a pynomaly.revocations.RevocationList, or None
        self.issuer, self.audience, self.role_claim = issuer, audience, role_claim
        self.secrets_enabled = secrets_enabled
        self._public = {kid: _public_key(p) for kid, p in (public_keys or {}).items()}
        self._lock = threading.Lock()
        self._keys: Dict[str, Tuple[object, str]] = {}
        self._stamp = None
        self._checked_at = 0.0
        self._memory: Dict[str, Principal] = {}
        if secrets_enabled:
            ensure_secret(self.home)
        self._reload()

    def _reload(self) -> None:
        path = _keys_path(self.home)
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        self._checked_at = time.monotonic()
        if stamp == self._stamp and self._keys:
            return
        keys = dict(self._public)
        if self.secrets_enabled:
            keys.update({k["kid"]: (k["secret"], "HS256") for k in read_secrets(self.home)})
        with self._lock:
            self._keys, self._stamp = keys, stamp
            self._memory = {}

    def verify(self, token: str) -> Principal:
        """The caller a token names; TokenError saying why when it names no one."""
        now = time.time()
        if time.monotonic() - self._checked_at > 1.0:
            self._reload()
        p = self._memory.get(token)
        if p is not None and now >= p.expires + LEEWAY_S:
            self._memory.pop(token, None)
            p = None
        if p is None:
            p = self._check(token)
            if len(self._memory) >= self._MEMORY:
                self._memory = {}
            self._memory[token] = p
        # Asked on every request, remembered tokens too: a revocation takes effect at once.
        r = self.revocations
        if r is not None and r.refuses(p.subject, p.issued_at, p.jti, p.parent):
            raise TokenError("the token has been revoked (signed out, its user removed, or `pynomaly token revoke`)")
        return p

    def _check(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            # The decoder's own words (codecs, padding) tell a user nothing about what to do.
            raise TokenError("this is not a pynomaly token: expected a JWT (three base64url parts joined by dots) "
                             f"as {_MAKE_ONE} prints") from None
        kid = header.get("kid")
        if kid is None:
            if len(self._keys) != 1:
                raise TokenError("the token has no key id (kid)")
            kid = next(iter(self._keys))
        found = self._keys.get(kid)
        if found is None:
            self._reload()  # a key added since the last look
            found = self._keys.get(kid)
            if found is None:
                raise TokenError(f"the token was signed with an unknown key ({str(kid)[:40]!r}): a token must come "
                                 "from this server's home (or its PYNOMALY_CONFIG_DIR for a database home), "
                                 f"where its signing keys live; make one there with {_MAKE_ONE}")
        key, alg = found
        if header.get("alg") != alg:
            raise TokenError(f"the token's algorithm {str(header.get('alg'))[:20]!r} is not accepted for its key")
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer, leeway=LEEWAY_S,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise TokenError(f"the token is not meant for this server (audience must be {self.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise TokenError(f"the token was not issued by {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise TokenError("the token's signature does not match") from None
        except jwt.DecodeError:  # after InvalidSignatureError, its subclass
            raise TokenError(f"this is not a pynomaly token: its parts do not decode; make one with "
                             f"{_MAKE_ONE}") from None
        except jwt.PyJWTError as e:
            raise TokenError(f"invalid token: {e}") from None
        role = claims.get(self.role_claim)
        if role not in ROLES:
            raise TokenError(f"the token's {self.role_claim!r} claim must be one of {', '.join(ROLES)}")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise TokenError("the token's subject (sub) must be a non-empty string")
        jti, iat, parent = claims.get("jti"), claims.get("iat"), claims.get("parent")
        return Principal(sub, role, float(claims["exp"]), jti if isinstance(jti, str) else None,
                         float(iat) if isinstance(iat, (int, float)) else None,
                         parent if isinstance(parent, str) else None)


def bearer(header: Optional[str]) -> str:
    """The token of an ``Authorization: Bearer ...`` header; TokenError when absent or malformed."""
    if not header:
        raise TokenError("authentication required: send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


__all__ = ["ROLES", "PERMISSIONS", "Principal", "ANONYMOUS", "TokenError", "ForbiddenError", "Verifier",
           "create_token", "token_id", "rotate", "read_secrets", "ensure_secret", "parse_ttl", "bearer"]
