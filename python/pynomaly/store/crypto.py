"""Encryption at rest of a home: a data key wrapped by a key that lives elsewhere.

A home made with ``pynomaly init --encrypt`` holds ``keyring.json``: one or more data keys
(32 random bytes each, named by a random id), each wrapped (AES-256-GCM) by the key-encryption
key (KEK). The KEK is never stored in the home; it comes from ``--key-file PATH`` (mode 0600,
outside the home), ``--key-command CMD`` (its standard output, e.g. a KMS or ``systemd-creds``
call) or the environment (``PYNOMALY_KEY_FILE``, ``PYNOMALY_KEY_COMMAND``, else
``PYNOMALY_KEY``), each holding the base64 of 32 random bytes.

What is sealed with the current data key, AES-256-GCM with a fresh 96-bit nonce each time:

- artifact files (models, stored results, anything a face stores as an artifact): file
  ``MAGIC | key id (8) | nonce (12) | ciphertext+tag`` of the zstd-compressed bytes, with
  associated data binding the blob to its content hash and to its context (for a model
  version, the detector's name and version): a file moved to another name, or a row
  repointed at another detector's blob, fails authentication;
- sensitive database fields (dataset names and source paths, thresholds): text
  ``enc1:`` + base64 of ``key id | nonce | ciphertext+tag``, bound to their table, column
  and row.

Why AES-GCM and not Fernet (which the architecture names): Fernet has no associated data, so
it cannot bind a blob to its hash and detector without carrying them inside; it is AES-128-CBC
plus HMAC-SHA256 with a base64 text token (a third larger than the bytes), and it decrypts
through two passes. AES-256-GCM authenticates associated data natively, is one pass with
AES-NI/CLMUL, adds 28 bytes per blob, and is the AEAD of the ``cryptography`` package.

``cryptography`` is imported only when an encrypted home is used (extra ``encrypt``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import subprocess
import threading
from pathlib import Path
from typing import Optional

from pynomaly._errors import ArtifactIntegrityError, InvalidInputError, KeyRequiredError, RepositoryError
from pynomaly.store._files import atomic_write, private_enough

__all__ = ["KeySource", "key_source", "decode_key", "HomeCipher", "KEYRING", "is_encrypted", "create_keyring",
           "context_tag", "ARTIFACT_MAGIC", "FIELD_PREFIX", "new_key_text"]

KEYRING = "keyring.json"
_KEYRING_FORMAT = "pynomaly-keyring/1"
ARTIFACT_MAGIC = b"PNYENC01"
FIELD_PREFIX = "enc1:"
_ID = 8  # bytes of a key id
_NONCE = 12
ENV_KEY, ENV_KEY_FILE, ENV_KEY_COMMAND = "PYNOMALY_KEY", "PYNOMALY_KEY_FILE", "PYNOMALY_KEY_COMMAND"


def _aesgcm(key: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise RepositoryError(
            "this home is encrypted and the 'cryptography' package is not installed: pip install 'pynomaly[encrypt]'"
        ) from None
    return AESGCM(key)


def _invalid_tag():
    from cryptography.exceptions import InvalidTag

    return InvalidTag


def new_key_text() -> str:
    """A new key as its text form: the base64 of 32 random bytes (what a key file holds)."""
    return base64.b64encode(os.urandom(32)).decode() + "\n"


def decode_key(raw, where: str, *, allow_raw: bool = True) -> bytes:
    """The 32-byte key in ``raw``: base64 text of 32 bytes, or (``allow_raw``: from a file or
    a command) the 32 bytes themselves. A 32-character variable is not taken as a key: it is
    far more likely a password than 32 random bytes."""
    if isinstance(raw, str):
        raw = raw.encode()
    text = raw.strip()
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = None
    if key is None or len(key) != 32:
        if len(raw) == 32 and allow_raw:  # the raw bytes themselves (base64 of 32 bytes is 44 characters)
            return bytes(raw)
        got = f"{len(key)} bytes after base64" if key is not None else f"{len(raw)} bytes that are not base64"
        raise KeyRequiredError(
            f"{where} must hold the base64 of 32 random bytes (make one: head -c32 /dev/urandom | base64); found {got}"
        )
    return key


class KeySource:
    """Where a key comes from: ``kind`` "env" (a variable), "file" or "command"."""

    _cache: dict = {}
    _lock = threading.Lock()

    def __init__(self, kind: str, value: str, *, variable: str = ENV_KEY):
        self.kind, self.value, self.variable = kind, value, variable

    def __repr__(self):
        return f"KeySource({self.describe()})"

    def describe(self) -> str:
        if self.kind == "env":
            return f"${self.variable}"
        if self.kind == "file":
            return f"key file {self.value}"
        return f"key command {self.value!r}"

    def check_outside(self, home: Path) -> None:
        """Refuse a key file inside the home it protects (a stolen disk would carry both)."""
        if self.kind != "file":
            return
        home_r, path_r = Path(home).resolve(), Path(self.value).expanduser().resolve()
        if home_r == path_r or home_r in path_r.parents:
            raise KeyRequiredError(f"the key file {self.value} is inside the home {home} it protects; keep it elsewhere")

    def load(self) -> bytes:
        """The 32-byte key (read once per process and source; a key file again when it changed)."""
        ident = (self.kind, self.value)
        if self.kind == "file":
            try:
                st = Path(self.value).expanduser().stat()
                ident += (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                pass  # _read says what is wrong
        with KeySource._lock:
            key = KeySource._cache.get(ident)
        if key is not None:
            return key
        key = decode_key(self._read(), self.describe(), allow_raw=self.kind != "env")
        with KeySource._lock:
            KeySource._cache[ident] = key
        return key

    def _read(self) -> bytes:
        if self.kind == "env":
            return self.value.encode()
        if self.kind == "file":
            path = Path(self.value).expanduser()
            try:
                st = path.stat()
            except FileNotFoundError:
                raise KeyRequiredError(f"the key file {path} does not exist") from None
            except OSError as e:
                raise KeyRequiredError(f"the key file {path} cannot be read: {e}") from None
            if not private_enough(st):
                raise KeyRequiredError(
                    f"the key file {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                    f"run: chmod 600 {path}"
                )
            try:
                return path.read_bytes()
            except OSError as e:
                raise KeyRequiredError(f"the key file {path} cannot be read: {e}") from None
        try:
            done = subprocess.run(self.value, shell=True, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KeyRequiredError(f"the key command {self.value!r} failed: {e}") from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise KeyRequiredError(
                f"the key command {self.value!r} exited with status {done.returncode}"
                + (f": {err[0]}" if err else "")
            )
        return done.stdout


def key_source(key_file=None, key_command=None, *, environ=None, prefix: str = "PYNOMALY_") -> Optional[KeySource]:
    """The key source to use: ``key_file`` or ``key_command`` when given, else the
    environment (``{prefix}KEY_FILE``, ``{prefix}KEY_COMMAND``, ``{prefix}KEY``); None if none."""
    env = os.environ if environ is None else environ
    if key_file and key_command:
        raise InvalidInputError("give either a key file or a key command, not both")
    if key_file:
        return KeySource("file", str(key_file))
    if key_command:
        return KeySource("command", str(key_command))
    if env.get(prefix + "KEY_FILE"):
        return KeySource("file", env[prefix + "KEY_FILE"])
    if env.get(prefix + "KEY_COMMAND"):
        return KeySource("command", env[prefix + "KEY_COMMAND"])
    if env.get(prefix + "KEY"):
        return KeySource("env", env[prefix + "KEY"], variable=prefix + "KEY")
    return None


def _missing(home) -> KeyRequiredError:
    return KeyRequiredError(
        f"the home {home} is encrypted and no key was given: set PYNOMALY_KEY (base64 of 32 bytes), "
        "or pass --key-file PATH or --key-command CMD (env PYNOMALY_KEY_FILE / PYNOMALY_KEY_COMMAND)"
    )


def is_encrypted(home) -> bool:
    return (Path(home) / KEYRING).exists()


def context_tag(context: str) -> str:
    """The short name of an artifact's context (what its file name and associated data carry)."""
    return hashlib.sha256(context.encode()).hexdigest()[:32]


def _wrap(kek: bytes, key_id: str, dek: bytes) -> str:
    nonce = os.urandom(_NONCE)
    ct = _aesgcm(kek).encrypt(nonce, dek, b"pynomaly-dek/1\0" + key_id.encode())
    return base64.b64encode(nonce + ct).decode()


def _unwrap(kek: bytes, key_id: str, wrapped: str, home, source: KeySource) -> bytes:
    raw = base64.b64decode(wrapped)
    try:
        return _aesgcm(kek).decrypt(raw[:_NONCE], raw[_NONCE:], b"pynomaly-dek/1\0" + key_id.encode())
    except _invalid_tag():
        raise KeyRequiredError(
            f"the key from {source.describe()} does not open the data key of {home} (wrong key?)"
        ) from None


def _write_keyring(home, ring: dict) -> None:
    path = Path(home) / KEYRING
    atomic_write(path, json.dumps(ring, indent=1, sort_keys=True).encode())
    os.chmod(path, 0o600)


def create_keyring(home, kek: bytes) -> str:
    """Make ``home`` encrypted: a new data key wrapped by ``kek``; returns its id."""
    key_id = os.urandom(_ID).hex()
    ring = {"format": _KEYRING_FORMAT, "cipher": "AES-256-GCM", "current": key_id,
            "keys": {key_id: _wrap(kek, key_id, os.urandom(32))}, "retiring": []}
    _write_keyring(home, ring)
    return key_id


class HomeCipher:
    """The data keys of one encrypted home, unwrapped when first needed.

    The keyring file is re-read when it changes (another process rotated or re-encrypted);
    data keys already unwrapped are kept by id, so a process whose key-encryption key was
    rotated away keeps working with the data keys it holds.
    """

    # (home, key id, key source) -> data key, shared by the Repositories of the process that were
    # given the same key source (one without a key, or with another, unwraps for itself).
    _deks: dict = {}
    _lock = threading.Lock()

    def __init__(self, home, source: Optional[KeySource] = None):
        self.home = Path(home)
        self.source = source
        self._stamp = None
        self._ring: dict = {}

    # -- the keyring ---------------------------------------------------------------------
    def _path(self) -> Path:
        return self.home / KEYRING

    def ring(self) -> dict:
        """The keyring as stored (re-read when the file changed)."""
        try:
            st = self._path().stat()
        except FileNotFoundError:
            raise RepositoryError(f"{self._path()} is missing: this encrypted home cannot be read") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                ring = json.loads(self._path().read_text())
                if ring.get("format") != _KEYRING_FORMAT or ring["current"] not in ring["keys"]:
                    raise ValueError("not a pynomaly keyring")
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise RepositoryError(f"{self._path()} is damaged ({e})") from None
            self._ring, self._stamp = ring, stamp
        return self._ring

    def kek(self) -> bytes:
        if self.source is None:
            raise _missing(self.home)
        self.source.check_outside(self.home)
        return self.source.load()

    def dek(self, key_id: str) -> bytes:
        if self.source is None:
            raise _missing(self.home)
        ident = (str(self.home.resolve()), key_id, self.source.kind, self.source.value)
        with HomeCipher._lock:
            got = HomeCipher._deks.get(ident)
        if got is not None:
            return got
        wrapped = self.ring()["keys"].get(key_id)
        if wrapped is None:
            raise ArtifactIntegrityError(f"data sealed with key {key_id}, which {self._path()} does not hold")
        dek = _unwrap(self.kek(), key_id, wrapped, self.home, self.source)
        with HomeCipher._lock:
            HomeCipher._deks[ident] = dek
        return dek

    def _remember(self, source: KeySource, key_id: str, dek: bytes) -> None:
        with HomeCipher._lock:
            HomeCipher._deks[(str(self.home.resolve()), key_id, source.kind, source.value)] = dek

    def current(self) -> str:
        return self.ring()["current"]

    def require(self) -> None:
        """Raise KeyRequiredError now unless every data key of the home can be unwrapped."""
        for key_id in self.ring()["keys"]:
            self.dek(key_id)

    # -- artifacts -----------------------------------------------------------------------
    @staticmethod
    def _artifact_ad(sha: str, tag: str, key_id: str) -> bytes:
        return b"pynomaly-artifact/1\0" + sha.encode() + b"\0" + tag.encode() + b"\0" + key_id.encode()

    def seal_artifact(self, packed: bytes, sha: str, tag: str) -> bytes:
        key_id = self.current()
        nonce = os.urandom(_NONCE)
        ct = _aesgcm(self.dek(key_id)).encrypt(nonce, packed, self._artifact_ad(sha, tag, key_id))
        return ARTIFACT_MAGIC + bytes.fromhex(key_id) + nonce + ct

    @staticmethod
    def artifact_key_id(raw: bytes) -> Optional[str]:
        if len(raw) < len(ARTIFACT_MAGIC) + _ID + _NONCE + 16 or not raw.startswith(ARTIFACT_MAGIC):
            return None
        return raw[len(ARTIFACT_MAGIC) : len(ARTIFACT_MAGIC) + _ID].hex()

    def open_artifact(self, raw: bytes, sha: str, tag: str, what: str) -> bytes:
        key_id = self.artifact_key_id(raw)
        if key_id is None:
            raise ArtifactIntegrityError(f"{what} is not an encrypted pynomaly artifact (truncated or replaced)")
        dek = self.dek(key_id)
        body = raw[len(ARTIFACT_MAGIC) + _ID :]
        try:
            return _aesgcm(dek).decrypt(body[:_NONCE], body[_NONCE:], self._artifact_ad(sha, tag, key_id))
        except _invalid_tag():
            raise ArtifactIntegrityError(
                f"{what} fails authentication: it was modified, or it belongs to another detector or version"
            ) from None

    # -- fields --------------------------------------------------------------------------
    def seal_field(self, value, where: str):
        """``value`` (a str or a number, or None) as sealed text bound to ``where``."""
        if value is None:
            return None
        plain = json.dumps(value).encode()
        key_id = self.current()
        nonce = os.urandom(_NONCE)
        ct = _aesgcm(self.dek(key_id)).encrypt(nonce, plain, b"pynomaly-field/1\0" + where.encode())
        return FIELD_PREFIX + base64.b64encode(bytes.fromhex(key_id) + nonce + ct).decode()

    @staticmethod
    def field_key_id(text) -> Optional[str]:
        if not isinstance(text, str) or not text.startswith(FIELD_PREFIX):
            return None
        try:
            return base64.b64decode(text[len(FIELD_PREFIX) :])[:_ID].hex()
        except (binascii.Error, ValueError):
            return None

    def open_field(self, text, where: str):
        """The value of a field sealed by :meth:`seal_field` (a plain value passes through)."""
        if not isinstance(text, str) or not text.startswith(FIELD_PREFIX):
            return text
        try:
            raw = base64.b64decode(text[len(FIELD_PREFIX) :])
        except (binascii.Error, ValueError):
            raise ArtifactIntegrityError(f"the encrypted field {where} is damaged") from None
        dek = self.dek(raw[:_ID].hex())
        body = raw[_ID:]
        try:
            plain = _aesgcm(dek).decrypt(body[:_NONCE], body[_NONCE:], b"pynomaly-field/1\0" + where.encode())
        except _invalid_tag():
            raise ArtifactIntegrityError(f"the encrypted field {where} fails authentication (modified or moved)") from None
        return json.loads(plain)

    # -- keys ------------------------------------------------------------------------------
    def rewrap(self, new_source: KeySource) -> list:
        """Wrap every data key with the key from ``new_source`` (the data stays as it is);
        returns the key ids."""
        new_source.check_outside(self.home)
        ring = dict(self.ring())
        new_kek = new_source.load()
        deks = {kid: self.dek(kid) for kid in ring["keys"]}
        ring["keys"] = {kid: _wrap(new_kek, kid, dek) for kid, dek in deks.items()}
        _write_keyring(self.home, ring)
        self.source = new_source
        for kid, dek in deks.items():
            self._remember(new_source, kid, dek)
        return sorted(ring["keys"])

    def begin_new_key(self) -> str:
        """Start (or continue) a re-encryption: a new current data key, the others retiring."""
        ring = dict(self.ring())
        if ring.get("retiring"):
            return ring["current"]  # an earlier run was interrupted: carry on with its key
        for kid in ring["keys"]:
            self.dek(kid)  # every old key must open before anything changes
        key_id = os.urandom(_ID).hex()
        ring["keys"] = {**ring["keys"], key_id: _wrap(self.kek(), key_id, os.urandom(32))}
        ring["retiring"] = sorted(k for k in ring["keys"] if k != key_id)
        ring["current"] = key_id
        _write_keyring(self.home, ring)
        return key_id

    def finish_new_key(self) -> list:
        """Drop the retiring data keys (after nothing is sealed with them any more)."""
        ring = dict(self.ring())
        gone = list(ring.get("retiring") or [])
        ring["keys"] = {k: v for k, v in ring["keys"].items() if k not in gone}
        ring["retiring"] = []
        _write_keyring(self.home, ring)
        return gone

