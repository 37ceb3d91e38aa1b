"""The daemon's wire format: the msgspec Structs that cross the Unix socket, defined once.

The client (``pynomaly.client``) and the server (``pynomaly_daemon``) both use these types;
PROTOCOL.md at the top of the repository describes the same bytes for clients written in
other languages. A frame is a 4-byte big-endian body length followed by a MessagePack body;
each body is a map whose ``"op"`` key says which Struct it is (msgspec's tagged union).

Arrays travel as raw little-endian bytes: rows as float32 or float64 with an explicit
``shape``, results as float64 scores, uint8 labels, float64 probabilities and int64 anomaly
indices. Keeping ``data`` the last field of the last field of a request lets the daemon read
it in place, aligned (see PROTOCOL.md).
"""

from __future__ import annotations

import os
import stat
import struct
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

import msgspec

from pynomaly.domain import NAME_PATTERN

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_FRAME_DEFAULT",
    "HEADER",
    "FRAME_LENGTH",
    "append_frame",
    "frame",
    "default_socket_path",
    "unsafe_socket_folder",
    "Rows",
    "Detect",
    "ListDetectors",
    "Info",
    "Health",
    "Stats",
    "Reload",
    "Metrics",
    "Drift",
    "Request",
    "DetectorInfo",
    "DetectReply",
    "ListReply",
    "InfoReply",
    "HealthReply",
    "StatsReply",
    "ReloadReply",
    "MetricsReply",
    "DriftReply",
    "Error",
    "Reply",
    "ERROR_CODES",
    "WANT_ALL",
    "WANT_NAMES",
    "WANT_DEFAULT",
]

PROTOCOL_VERSION = 1
HEADER = 4  # bytes of the big-endian length prefix
FRAME_LENGTH = struct.Struct(">I")
MAX_FRAME_DEFAULT = 64 * 1024 * 1024
_ENCODER = msgspec.msgpack.Encoder()


def append_frame(out: bytearray, msg, encoder: msgspec.msgpack.Encoder = _ENCODER) -> None:
    """Append one frame (length prefix, then ``msg`` as MessagePack) to ``out``; the one place
    both sides write frames."""
    at = len(out)
    out += b"\0\0\0\0"
    encoder.encode_into(msg, out, at + HEADER)
    FRAME_LENGTH.pack_into(out, at, len(out) - at - HEADER)


def frame(msg, encoder: msgspec.msgpack.Encoder = _ENCODER) -> bytearray:
    """One frame holding ``msg``."""
    out = bytearray()
    append_frame(out, msg, encoder)
    return out





def default_socket_path() -> str:
    """Where the daemon listens unless told otherwise: ``$XDG_RUNTIME_DIR/pynomaly/daemon.sock``,
    else ``/tmp/pynomaly-<uid>/daemon.sock`` (the folder is created with mode 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "pynomaly", "daemon.sock")
    return os.path.join("/tmp", f"pynomaly-{os.getuid()}", "daemon.sock")


def unsafe_socket_folder(folder: str) -> Optional[str]:
    """Why the default socket's ``folder`` cannot be trusted, or None when it can.

    The fallback folder lies in /tmp, where any user may have created it first: a folder that
    is a symbolic link, not owned by this user (the effective uid), or writable by its group or
    others could hold another user's socket, who would then receive every row sent. The rule of
    ssh-agent's and tmux's socket folders; the daemon and the client both apply it.
    """
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return None
    euid = os.geteuid()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        why = "is not a folder (a symbolic link or a file)"
    elif st.st_uid != euid:
        why = f"is owned by uid {st.st_uid}, not by this user (uid {euid})"
    elif st.st_mode & 0o022:
        why = f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        return None
    return (f"the socket folder {folder} {why}: another user may have made it to receive your rows; "
            f"remove it (or set XDG_RUNTIME_DIR, or give --socket / a socket path in a folder of your own)")


# What PROTOCOL.md promises, enforced by the one typed decoder (so every path refuses alike):
# ids are unsigned 64-bit, versions unsigned and within SQLite's integers, names as
# pynomaly.domain.NAME_PATTERN says.
RequestId = Annotated[int, msgspec.Meta(ge=0)]  # MessagePack holds at most 2**64 - 1
VersionNumber = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
DetectorName = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]

Want = Literal["scores", "labels", "probabilities", "anomalies", "attributions"]
# Every detection output; a request may also ask for "attributions" (WANT_NAMES), which costs
# an explanation of its rows and is only given where asked for by name.
WANT_ALL = ("scores", "labels", "probabilities", "anomalies")
WANT_NAMES = WANT_ALL + ("attributions",)


WANT_DEFAULT = ("scores", "labels")


# Every Struct here is gc=False: messages never form reference cycles, so the cyclic garbage
# collector need not track the daemon's many short-lived ones.


# -- requests ------------------------------------------------------------------------------
class Rows(msgspec.Struct, gc=False, forbid_unknown_fields=True, omit_defaults=True):
    """A matrix as raw bytes: ``shape[0] * shape[1]`` little-endian values of ``dtype``.

    ``dtype`` is ``"f4"`` (float32) or ``"f8"`` (float64), rows one after another (C order).
    The daemon decodes ``data`` as a view of its receive buffer, so it is never copied.
    Instead of ``data``, ``memfd`` (0) says the values are at the start of a sealed memfd
    passed with the frame (PROTOCOL.md, "Shared memory"); exactly one of the two is given.
    """

    dtype: str
    shape: List[int]
    data: Optional[memoryview] = None  # omitted only when memfd is given
    memfd: Optional[Annotated[int, msgspec.Meta(ge=0, le=0)]] = None


class Detect(msgspec.Struct, gc=False, tag="detect", tag_field="op", forbid_unknown_fields=True,
             omit_defaults=True):
    """Score rows with a detector; ``rows`` is a :class:`Rows` or a list of lists of numbers.

    ``explain_method`` names how ``want: ["attributions"]`` are computed (None: the detector's
    default). ``learn``: a streaming detector scores each row, then learns it (the ``learn``
    role). Fields left at their defaults are not sent, so a plain detect stays within the native
    path's frame (PROTOCOL.md, "Attributions" and "Learning detectors").
    """

    id: RequestId
    detector: DetectorName
    version: Optional[VersionNumber] = None  # None: the latest active version
    want: Optional[List[Want]] = None  # None: ["scores", "labels"]
    explain_method: Optional[Annotated[str, msgspec.Meta(max_length=64)]] = None
    learn: bool = False
    rows: Union[Rows, List[List[float]], None] = None  # last, so raw data ends the frame


class ListDetectors(msgspec.Struct, gc=False, tag="list", tag_field="op", forbid_unknown_fields=True):
    """Every detector the daemon can serve (latest versions)."""

    id: RequestId


class Info(msgspec.Struct, gc=False, tag="info", tag_field="op", forbid_unknown_fields=True):
    """Details of one detector (loading it if needed)."""

    id: RequestId
    detector: DetectorName
    version: Optional[VersionNumber] = None


class Health(msgspec.Struct, gc=False, tag="health", tag_field="op", forbid_unknown_fields=True):
    """Liveness: answered from the event loop without touching detectors."""

    id: RequestId


class Stats(msgspec.Struct, gc=False, tag="stats", tag_field="op", forbid_unknown_fields=True):
    """Counters since start."""

    id: RequestId


class Reload(msgspec.Struct, gc=False, tag="reload", tag_field="op", forbid_unknown_fields=True):
    """Drop cached detectors (one, or all when ``detector`` is None) so the next request loads the latest."""

    id: RequestId
    detector: Optional[DetectorName] = None


class Metrics(msgspec.Struct, gc=False, tag="metrics", tag_field="op", forbid_unknown_fields=True):
    """The daemon's metrics in the Prometheus text format (what ``--metrics-port`` serves)."""

    id: RequestId


class Drift(msgspec.Struct, gc=False, tag="drift", tag_field="op", forbid_unknown_fields=True):
    """A detector's drift: its live window against its training reference (``pynomaly drift``).
    ``window`` in seconds (default 3600); ``method`` "psi" (default) or "ks"; ``min_rows``: rows
    counted before drift is decided (default 300)."""

    id: RequestId
    detector: DetectorName
    version: Optional[VersionNumber] = None
    window: Optional[Annotated[float, msgspec.Meta(gt=0)]] = None
    method: Optional[Literal["psi", "ks"]] = None
    psi_threshold: Optional[Annotated[float, msgspec.Meta(gt=0)]] = None
    alpha: Optional[Annotated[float, msgspec.Meta(gt=0, lt=1)]] = None
    min_rows: Optional[Annotated[int, msgspec.Meta(ge=1)]] = None


Request = Union[Detect, ListDetectors, Info, Health, Stats, Reload, Metrics, Drift]


# -- replies -------------------------------------------------------------------------------
class DetectorInfo(msgspec.Struct, gc=False, omit_defaults=True):
    """What the daemon knows about one detector version."""

    name: str
    version: int
    algorithm: str
    n_features: int
    threshold: Optional[float] = None
    loaded: bool = False
    size_bytes: Optional[int] = None
    status: Optional[str] = None  # the repository's lifecycle status ("active", ...) where known


class DetectReply(msgspec.Struct, gc=False, tag="detect", tag_field="op", omit_defaults=True):
    """Results of a :class:`Detect`, as raw little-endian arrays of ``n_rows`` values.

    Only the arrays asked for in ``want`` are present: ``scores`` float64 (higher is more
    anomalous), ``labels`` uint8 0/1 (``score > threshold``), ``probabilities`` float64 in
    [0, 1], ``anomalies`` int64 indices of rows labelled 1, ``attributions`` float64
    ``n_rows x n_features`` values row after row (the detector's ``explain(X, method).values``),
    with the ``explain_method`` and ``explain_output`` they came from.
    """

    id: int
    detector: str
    version: int
    n_rows: int
    threshold: float
    scores: Optional[bytes] = None
    labels: Optional[bytes] = None
    probabilities: Optional[bytes] = None
    anomalies: Optional[bytes] = None
    attributions: Optional[bytes] = None
    explain_method: Optional[str] = None
    explain_output: Optional[str] = None


class ListReply(msgspec.Struct, gc=False, tag="list", tag_field="op"):
    id: int
    detectors: List[DetectorInfo]


class InfoReply(msgspec.Struct, gc=False, tag="info", tag_field="op"):
    id: int
    detector: DetectorInfo


class HealthReply(msgspec.Struct, gc=False, tag="health", tag_field="op"):
    id: int
    status: str  # "ok", or "draining" after SIGTERM
    version: str
    protocol: int
    pid: int
    uptime_s: float


class StatsReply(msgspec.Struct, gc=False, tag="stats", tag_field="op"):
    """Counters; ``requests`` and ``errors`` map op names and error codes to counts."""

    id: int
    uptime_s: float
    connections: int
    connections_total: int
    in_flight: int
    requests: Dict[str, int]
    errors: Dict[str, int]
    rows_scored: int
    native_calls: int
    coalesced_requests: int
    cache_entries: int
    cache_bytes: int
    cache_hits: int
    cache_misses: int
    copied_rows: int  # rows of large requests that could not be scored in place (misaligned)
    fast_path_requests: int = 0  # detect requests answered by the daemon's native fast path


class ReloadReply(msgspec.Struct, gc=False, tag="reload", tag_field="op"):
    id: int
    invalidated: List[str]


class MetricsReply(msgspec.Struct, gc=False, tag="metrics", tag_field="op"):
    """``text``: the Prometheus text format 0.0.4 (``content_type`` says so)."""

    id: int
    text: str
    content_type: str


class DriftReply(msgspec.Struct, gc=False, tag="drift", tag_field="op"):
    """``document``: the drift document (``pynomaly drift --json``, the HTTP API's
    ``GET /api/v1/detectors/{name}/drift``)."""

    id: int
    document: Dict[str, Any]


class Error(msgspec.Struct, gc=False, tag="error", tag_field="op"):
    """A typed failure of one request (``id`` is 0 when the request's id could not be read)."""

    id: int
    code: str
    message: str


Reply = Union[DetectReply, ListReply, InfoReply, HealthReply, StatsReply, ReloadReply, MetricsReply, DriftReply,
              Error]

# Every code an Error may carry, with whether the connection stays open after it.
ERROR_CODES = {
    "bad_request": "the frame is not valid MessagePack or not a valid request (connection stays open)",
    "bad_shape": "rows have the wrong shape, size or number of features (stays open)",
    "bad_dtype": "rows dtype is not 'f4' or 'f8' (stays open)",
    "bad_value": "rows contain NaN or infinity, or another value the detector refuses (stays open)",
    "unknown_detector": "no detector of that name, or no such version (stays open)",
    "unavailable": "the detector exists but cannot be loaded or used for detection (stays open)",
    "busy": "the daemon's in-flight work is at its bound; retry later (stays open)",
    "internal": "an unexpected server error; logged by the daemon (stays open)",
    "frame_too_large": "the length prefix exceeds the daemon's maximum frame size (then closed)",
    "timeout": "a frame was not completed in time (then closed)",
    "overloaded": "the daemon cannot buffer this large frame now (receive memory bound); retry later (then closed)",
    "too_many_connections": "the daemon's connection limit is reached (then closed)",
    "forbidden": "the peer may not do this: its uid is not in the allow-list (id 0, then closed), or its role "
                 "does not allow the op (stays open)",
}
