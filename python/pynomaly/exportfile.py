"""The export file: one self-contained, checksummed file holding a detector version (what
``pynomaly export`` writes and ``pynomaly import`` and the daemon's model folders read).

Layout: ``PYNOMALY-EXPORT\\n``, u32 format version, u64 header length, JSON header (detector and
version metadata, artifact hash and signature), the zstd-compressed artifact, then the SHA-256
of everything before it. Reading checks it end to end; nothing is unpickled or built here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ._errors import ArtifactIntegrityError, InvalidInputError
from ._files import atomic_write, zstd

__all__ = ["Export", "read_export", "write_export"]

_EXPORT_MAGIC = b"PYNOMALY-EXPORT\n"
_EXPORT_VERSION = 1


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


def read_export(path) -> Export:
    """Read and check an export file (checksum, format version, artifact hash).

    Raises InvalidInputError when it cannot be read and ArtifactIntegrityError when it is not
    an intact export file. Nothing is unpickled or built here.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"cannot read {str(path)!r}: {e}") from None
    n0 = len(_EXPORT_MAGIC) + 12
    if len(raw) < n0 + 32 or not raw.startswith(_EXPORT_MAGIC):
        raise ArtifactIntegrityError(f"{path.name} is not a pynomaly export file")
    body, digest = raw[:-32], raw[-32:]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
        raise ArtifactIntegrityError(f"{path.name} is corrupted or was modified (checksum mismatch)")
    fv, hl = struct.unpack("<IQ", body[len(_EXPORT_MAGIC) : n0])
    if fv != _EXPORT_VERSION:
        raise ArtifactIntegrityError(f"{path.name} has export format {fv}; this pynomaly reads {_EXPORT_VERSION}")
    try:
        header = json.loads(body[n0 : n0 + hl])
        meta, ver = header["detector"], header["version"]
        blob = zstd().ZstdDecompressor().decompress(body[n0 + hl :])
    except Exception as e:
        raise ArtifactIntegrityError(f"{path.name}: cannot be read ({type(e).__name__}: {e})") from None
    sha = hashlib.sha256(blob).hexdigest()
    if sha != header["artifact_sha256"]:
        raise ArtifactIntegrityError(f"{path.name}: artifact does not match its hash")
    return Export(
        name=meta["name"],
        algorithm=meta["algorithm"],
        parameters=meta["parameters"],
        format=ver["format"],
        signature=ver["signature"],
        n_features=ver["n_features"],
        feature_names=header.get("feature_names"),
        data_fingerprint=ver["data_fingerprint"],
        threshold=ver["threshold"],
        trained_at=datetime.fromisoformat(ver["trained_at"]),
        blob=blob,
        sha256=sha,
    )


def write_export(path, *, name: str, algorithm: str, parameters: dict, blob: bytes, n_features: int,
                 threshold=None, format: str = "native", signature=None, version: int = 1, feature_names=None,
                 data_fingerprint=None, trained_at=None, created_at=None) -> Path:
    """Write one self-contained, checksummed export file (atomically) and return its path.

    Layout: ``PYNOMALY-EXPORT\\n``, u32 format version, u64 header length, JSON header
    (detector and version metadata, artifact hash and signature), the zstd-compressed
    artifact, then the SHA-256 of everything before it. :func:`read_export` reads it back.
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
    atomic_write(path, body + hashlib.sha256(body).digest())
    return path
