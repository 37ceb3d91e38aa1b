"""The snapshot format of the streaming detectors (pynomaly.estimators.stream), version 1.

    magic    16 bytes  b"PYNOMALY-STREAM\\n"
    version  u32       1
    header   u32 length, then UTF-8 JSON: {"class", "params", "features", "extra"}
    state    u64 length, then the native state (cpp/stream_*.cpp read it, bounds-checked)
    crc      u32       CRC-32 of everything before it

No pickle: the header is JSON and the state is plain little-endian numbers. Every field is
checked; anything else is a ModelFormatError.
"""

from __future__ import annotations

import json
import struct
import zlib

from pynomaly._errors import ModelFormatError

MAGIC = b"PYNOMALY-STREAM\n"
VERSION = 1
_MAX_HEADER = 1 << 24  # a header is parameters and feature names: far below 16 MiB


def pack(kind: str, params: dict, features, extra: dict, state: bytes) -> bytes:
    header = json.dumps({"class": kind, "params": params, "features": None if features is None else list(features),
                         "extra": extra}, allow_nan=False).encode()
    body = b"".join([MAGIC, struct.pack("<II", VERSION, len(header)), header, struct.pack("<Q", len(state)), state])
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(kind: str, blob) -> tuple[dict, list | None, dict, bytes]:
    """(params, features, extra, state) of a ``kind`` snapshot."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ModelFormatError(f"a stream snapshot is bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < len(MAGIC) + 20 or not blob.startswith(MAGIC):
        raise ModelFormatError("not a pynomaly stream snapshot (bad magic or too short)")
    if struct.unpack("<I", blob[-4:])[0] != zlib.crc32(blob[:-4]):
        raise ModelFormatError("stream snapshot is corrupted (checksum mismatch)")
    version, n_header = struct.unpack_from("<II", blob, len(MAGIC))
    if version != VERSION:
        raise ModelFormatError(f"stream snapshot version {version} is not supported (this pynomaly reads {VERSION})")
    at = len(MAGIC) + 8
    if n_header > _MAX_HEADER or at + n_header + 8 + 4 > len(blob):
        raise ModelFormatError("stream snapshot is truncated (header)")
    try:
        header = json.loads(blob[at:at + n_header].decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelFormatError("stream snapshot header is not valid JSON") from None
    at += n_header
    (n_state,) = struct.unpack_from("<Q", blob, at)
    at += 8
    if at + n_state + 4 != len(blob):
        raise ModelFormatError("stream snapshot is truncated or has trailing bytes (state)")
    if not isinstance(header, dict) or set(header) != {"class", "params", "features", "extra"}:
        raise ModelFormatError("stream snapshot header lacks class, params, features or extra")
    if header["class"] != kind:
        raise ModelFormatError(f"stream snapshot holds a {header['class']!r}, not a {kind}")
    if not isinstance(header["params"], dict) or not isinstance(header["extra"], dict):
        raise ModelFormatError("stream snapshot header: params and extra must be objects")
    if header["features"] is not None and not isinstance(header["features"], list):
        raise ModelFormatError("stream snapshot header: features must be a list or null")
    return header["params"], header["features"], header["extra"], blob[at:at + n_state]
