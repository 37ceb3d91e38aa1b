"""The export file: one self-contained, checksummed file holding a detector version (what
``pynomaly export`` writes and ``pynomaly import`` and the daemon's model folders read).

Layout: ``PYNOMALY-EXPORT\\n``, u32 format version, u64 header length, JSON header (detector and
version metadata, artifact hash and signature), the zstd-compressed artifact, then the SHA-256
of everything before it. Reading checks it end to end; nothing is unpickled or built here.

An encrypted export (written with a ``key``: what an encrypted home writes) is
``PYNOMALY-EXPORT-AES\n``, u32 version, a 12-byte nonce, then the whole plain export file
sealed with AES-256-GCM under that key (the magic and version as associated data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import os
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from pynomaly._errors import ArtifactIntegrityError, InvalidInputError, KeyRequiredError
from pynomaly.store._files import atomic_write, zstd

__all__ = ["Export", "read_export", "write_export"]

_EXPORT_MAGIC = b"PYNOMALY-EXPORT\n"
_EXPORT_VERSION = 1
_SEALED_MAGIC = b"PYNOMALY-EXPORT-AES\n"
_SEALED_VERSION = 1


def _seal(body: bytes, key: bytes) -> bytes:
    from pynomaly.store.crypto import _aesgcm

    head = _SEALED_MAGIC + struct.pack("<I", _SEALED_VERSION)
    nonce = os.urandom(12)
    return head + nonce + _aesgcm(key).encrypt(nonce, body, head)


def _unseal(raw: bytes, key, name: str) -> bytes:
    from pynomaly.store.crypto import _aesgcm, _invalid_tag

    if key is None:
        raise KeyRequiredError(
            f"{name} is an encrypted export; give the key it was exported to (CLI: --export-key-file PATH)"
        )
    n0 = len(_SEALED_MAGIC) + 4
    (v,) = struct.unpack("<I", raw[len(_SEALED_MAGIC) : n0])
    if v != _SEALED_VERSION:
        raise ArtifactIntegrityError(f"{name} has encrypted export format {v}; this pynomaly reads {_SEALED_VERSION}")
    try:
        return _aesgcm(key).decrypt(raw[n0 : n0 + 12], raw[n0 + 12 :], raw[:n0])
    except _invalid_tag():
        raise ArtifactIntegrityError(f"{name}: wrong export key, or the file was modified") from None


def is_sealed(path) -> bool:
    """Whether the file at ``path`` is an encrypted export."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_SEALED_MAGIC)) == _SEALED_MAGIC
    except OSError:
        return False


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclasses.dataclass(frozen=True)
class Export:
    """The content of an export file (see :meth:`Repository.export`), checked end to end."""

    name: str
    algorithm: str
    parameters: dict
    format: str
    signature: Optional[str]
    n_features: int
    feature_names: Optional[list]
    data_fingerprint: Optional[str]
    threshold: Optional[float]
    trained_at: datetime
    blob: bytes
    sha256: str


def read_export(path, key: Optional[bytes] = None) -> Export:
    """Read and check an export file (checksum, format version, artifact hash).

    ``key``: the 32-byte key an encrypted export was written to. Raises InvalidInputError
    when it cannot be read, KeyRequiredError for an encrypted export without a key, and
    ArtifactIntegrityError when it is not an intact export file (or the key is wrong).
    Nothing is unpickled or built here.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"cannot read {str(path)!r}: {e}") from None
    if raw.startswith(_SEALED_MAGIC) and len(raw) >= len(_SEALED_MAGIC) + 4 + 12 + 16:
        raw = _unseal(raw, key, path.name)
    n0 = len(_EXPORT_MAGIC) + 12
    if len(raw) < n0 + 32 or not raw.startswith(_EXPORT_MAGIC):
        raise ArtifactIntegrityError(f"{path.name} is not a pynomaly export file")
    body, digest = raw[:-32], raw[-32:]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
        raise ArtifactIntegrityError(f"{path.name} is corrupted or was modified (checksum mismatch)")
    fv, hl = struct.unpack("<IQ", body[len(_EXPORT_MAGIC) : n0])
    if fv != _EXPORT_VERSION:
        raise ArtifactIntegrityError(f"{path.name} has export format {fv}; this pynomaly reads {_EXPORT_VERSION}")
    if hl > len(body) - n0:
        raise ArtifactIntegrityError(f"{path.name} is truncated (header of {hl} bytes)")
    try:
        header = json.loads(body[n0 : n0 + hl])
    except (ValueError, RecursionError) as e:
        raise ArtifactIntegrityError(f"{path.name}: its header cannot be read ({type(e).__name__}: {e})") from None
    # Every field is checked before anyone uses it: the checksum only proves the file is
    # whole, not that whoever wrote it was pynomaly.
    fields = _Fields(header, path.name)
    meta, ver = fields.obj("detector"), fields.obj("version")
    size = ver.integer("size", 0)
    blob = _decompress(body[n0 + hl :], size, path.name)
    sha = hashlib.sha256(blob).hexdigest()
    if sha != fields.text("artifact_sha256"):
        raise ArtifactIntegrityError(f"{path.name}: artifact does not match its hash")
    feature_names = header.get("feature_names")
    if feature_names is not None and not (
            isinstance(feature_names, list) and all(isinstance(n, str) for n in feature_names)):
        raise ArtifactIntegrityError(f"{path.name}: 'feature_names' must be a list of strings or null")
    algorithm, fmt = meta.text("algorithm"), ver.text("format")
    expected = artifact_format(algorithm)  # None: unknown, refused by whoever would build it
    if expected is not None and fmt != expected:
        # The format decides whether the signature is checked before unpickling: a pickle
        # declared "native" would be unpickled unsigned by whoever loads it.
        raise ArtifactIntegrityError(f"{path.name}: format {fmt!r} is not how {algorithm!r} is stored ({expected!r})")
    trained_at = ver.text("trained_at")
    try:
        trained_at = datetime.fromisoformat(trained_at)
    except ValueError:
        raise ArtifactIntegrityError(f"{path.name}: 'trained_at' is not an ISO date: {trained_at!r}") from None
    return Export(
        name=meta.text("name"),
        algorithm=algorithm,
        parameters=meta.obj("parameters").value,
        format=fmt,
        signature=ver.text("signature", optional=True),
        n_features=ver.integer("n_features", 1),
        feature_names=feature_names,
        data_fingerprint=ver.text("data_fingerprint", optional=True),
        threshold=ver.number("threshold"),
        trained_at=trained_at,
        blob=blob,
        sha256=sha,
    )


class _Fields:
    """Typed reads of an export header's JSON object; a missing or ill-typed field is an
    ArtifactIntegrityError naming it."""

    def __init__(self, value, file: str, where: str = "header"):
        if not isinstance(value, dict):
            raise ArtifactIntegrityError(f"{file}: the {where} must be a JSON object")
        self.value, self.file, self.where = value, file, where

    def _get(self, key: str, ok, what: str, optional: bool):
        v = self.value.get(key)
        if (v is None and optional) or (v is not None and ok(v)):
            return v
        raise ArtifactIntegrityError(f"{self.file}: {self.where} field {key!r} must be {what}, got {v!r:.80}")

    def obj(self, key: str) -> "_Fields":
        return _Fields(self._get(key, lambda v: isinstance(v, dict), "an object", False), self.file, key)

    def text(self, key: str, optional: bool = False):
        return self._get(key, lambda v: isinstance(v, str), "a string", optional)

    def integer(self, key: str, lo: int):
        return self._get(key, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo,
                         f"an integer >= {lo}", False)

    def number(self, key: str):
        return self._get(key, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                         "a finite number or null", True)


def artifact_format(algorithm: str) -> "str | None":
    """How a registry algorithm's artifact is stored ("native", "torch", "jax" or "pickle"),
    None for an unknown name. Readers trust no file's own word for it."""
    from pynomaly.estimators import registry

    if not registry.is_known(algorithm):
        return None
    kind = registry.kind(algorithm)
    return "pickle" if kind == "pyod" else kind


def _decompress(packed: bytes, size: int, file: str) -> bytes:
    """The artifact, refused unless it is exactly ``size`` bytes: read in pieces, so a frame
    that claims (or holds) more never gets more memory than the header declared."""
    out = bytearray()
    try:
        with zstd().ZstdDecompressor().stream_reader(packed) as r:
            while chunk := r.read(min(1 << 20, size + 1 - len(out))):
                out += chunk
    except zstd().ZstdError as e:
        raise ArtifactIntegrityError(f"{file}: the artifact cannot be decompressed ({e})") from None
    if len(out) != size:
        raise ArtifactIntegrityError(f"{file}: the artifact is not the {size} bytes its header declares")
    return bytes(out)


def write_export(path, *, name: str, algorithm: str, parameters: dict, blob: bytes, n_features: int,
                 threshold=None, format: str = "native", signature=None, version: int = 1, feature_names=None,
                 data_fingerprint=None, trained_at=None, created_at=None, key: Optional[bytes] = None) -> Path:
    """Write one self-contained, checksummed export file (atomically) and return its path.

    Layout: ``PYNOMALY-EXPORT\\n``, u32 format version, u64 header length, JSON header
    (detector and version metadata, artifact hash and signature), the zstd-compressed
    artifact, then the SHA-256 of everything before it. :func:`read_export` reads it back.
    With ``key`` (32 bytes) the file is that, sealed with AES-256-GCM (see the module's doc).
    """
    now = _now_iso()
    packed = zstd().ZstdCompressor(level=6).compress(blob)
    header = {
        "detector": {"name": name, "algorithm": algorithm, "parameters": parameters, "created_at": created_at or now},
        "version": {
            "version": version, "format": format, "signature": signature, "size": len(blob),
            "n_features": n_features, "data_fingerprint": data_fingerprint, "threshold": threshold,
            "trained_at": trained_at or now,
        },
        "feature_names": feature_names,
        "artifact_sha256": hashlib.sha256(blob).hexdigest(),
        "artifact_compressed_size": len(packed),
    }
    hb = json.dumps(header, sort_keys=True).encode()
    body = _EXPORT_MAGIC + struct.pack("<IQ", _EXPORT_VERSION, len(hb)) + hb + packed
    path = Path(path)
    data = body + hashlib.sha256(body).digest()
    atomic_write(path, data if key is None else _seal(data, key))
    return path
