"""The daemon's configuration: every setting once, with its command-line flag and help.

:class:`Config` is the typed value the daemon reads; :func:`build_parser` and
:func:`config_from_args` are derived from its fields' metadata, so a new setting is one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from pynomaly import wire

from .roles import parse_roles

_MB = 2**20


def _opt(default, help: str, *, flag: Optional[str] = None, scale: float = 1.0, type=None, unit: str = "",
         factory=None, zero_ok: bool = False, metavar: Optional[str] = None):
    """A setting: ``flag`` (default ``--field-name``); the command line gives ``value / scale``
    in ``unit`` (e.g. megabytes for a byte count). A number must be finite and positive
    (``zero_ok``: or 0)."""
    meta = {"help": help, "flag": flag, "scale": scale, "type": type, "unit": unit, "zero_ok": zero_ok,
            "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _default_workers() -> int:
    return max(2, len(os.sched_getaffinity(0)))


def _default_net_threads() -> int:
    return len(os.sched_getaffinity(0))


@dataclass
class Config:
    """Everything the daemon can be told; each field is one command-line option."""

    socket_path: str = _opt("", "socket path (default: pynomaly.wire.default_socket_path())", flag="--socket")
    socket_group: Optional[str] = _opt(None, "also let this group connect (socket mode 0660 instead of 0600)",
                                       flag="--group", type=str)
    allowed_uids: Optional[frozenset] = _opt(None, "accept only peers with this uid (SO_PEERCRED); repeatable",
                                             flag="--allow-uid", type=int)
    roles: Optional[tuple] = _opt(None, "give peers a role: ROLE=WHO[,WHO...], ROLE detect (detect, list, info, "
                                        "health, stats), learn (also detect with learn: true) or admin (everything, e.g. reload); WHO a uid, a user name, "
                                        "@gid or @group; repeatable. With roles, a peer without one is refused "
                                        "every op (the daemon's own uid is admin)",
                                  flag="--role", type=str, metavar="ROLE=WHO")
    roles_file: Optional[str] = _opt(None, "read roles from a file: one ROLE=WHO[,WHO...] line each, # comments",
                                     type=str, metavar="PATH")
    key_file: Optional[str] = _opt(None, "an encrypted home's key-encryption key file (default $PYNOMALY_KEY_FILE, "
                                         "$PYNOMALY_KEY_COMMAND, $PYNOMALY_KEY)", type=str, metavar="PATH")
    key_command: Optional[str] = _opt(None, "a command printing an encrypted home's key-encryption key",
                                      type=str, metavar="CMD")
    max_frame: int = _opt(wire.MAX_FRAME_DEFAULT, "largest frame accepted", flag="--max-frame-mb", scale=_MB, unit="MB")
    max_connections: int = _opt(1024, "connections served at once")
    # Issue 25: one peer must not take every connection. A uid without the admin role holds at
    # most this many, and the last --admin-connections are kept for admins (roles.Roles.admins).
    max_connections_per_uid: int = _opt(256, "connections one uid without the admin role may hold")
    admin_connections: int = _opt(16, "of --max-connections, kept for peers with the admin role (the daemon's "
                                      "own uid without roles)", zero_ok=True)
    max_in_flight: int = _opt(4096, "requests admitted and not yet answered, all clients")
    max_in_flight_rows: int = _opt(8_000_000, "rows admitted and not yet answered, all clients")
    max_rx_bytes: int = _opt(1 << 30, "memory for large frames being received, all clients together",
                             flag="--max-rx-mb", scale=_MB, unit="MB")
    max_shm_bytes: int = _opt(1 << 32, "largest rows one detect may pass in a memfd (mapped, not copied)",
                              flag="--max-shm-mb", scale=_MB, unit="MB")
    conn_max_in_flight: int = _opt(256, "per connection; reading from it pauses above this")
    idle_timeout: float = _opt(300.0, "seconds a connection with nothing to do stays open")
    frame_timeout: float = _opt(10.0, "seconds to complete a started frame")
    write_timeout: float = _opt(30.0, "seconds a client may leave replies unread")
    drain_timeout: float = _opt(10.0, "seconds to drain after SIGTERM", zero_ok=True)
    coalesce_window: float = _opt(0.0, "wait this long to coalesce small requests (0: within one event-loop iteration)",
                                  flag="--coalesce-window-ms", scale=1e-3, unit="ms", zero_ok=True)
    coalesce_rows: int = _opt(64, "requests with more rows are not coalesced", zero_ok=True)
    inline_rows: int = _opt(64, "batches with more rows are scored in the thread pool", zero_ok=True)
    split_rows: int = _opt(512, "large requests are scored in chunks of at least this many rows, in parallel")
    idle_inline_rows: int = _opt(2048, "requests up to this many rows skip the thread pool: scored by the native "
                                       "loop's thread (raw rows), or on the uvloop path when nothing else is in flight",
                                 zero_ok=True)
    refresh_interval: float = _opt(1.0, "seconds between checks for a newer version of a served detector")
    fast_path: bool = _opt(True, "serve every request through the Python path (the native one answers the same, sooner)",
                           flag="--no-fast-path")
    native_loop: bool = _opt(True, "serve connections from the Python event loop (uvloop) instead of the native "
                                   "connection loop (which answers the same, with less CPU per request)",
                             flag="--no-native-loop")
    net_threads: int = _opt(None, "threads of the native connection loop (one epoll set each)",
                            factory=_default_net_threads)
    trust_pickle: bool = _opt(False, "with --models: serve export files holding pickled (PyOD) models; "
                                     "only for a folder whose files you trust")
    cache_bytes: int = _opt(1 << 30, "memory for loaded detectors", flag="--cache-mb", scale=_MB, unit="MB")
    workers: int = _opt(None, "scoring threads", factory=_default_workers)
    # Issue 12: metrics, alerts and jobs.
    metrics_port: int = _opt(0, "serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (0: no HTTP; the "
                                "socket's `metrics` op answers either way)", zero_ok=True)
    metrics_host: str = _opt("127.0.0.1", "address the metrics port listens on", type=str)
    alerts: bool = _opt(True, "do not check detections against alert rules nor deliver alerts (repository homes "
                              "only; they are off for --models folders)", flag="--no-alerts")
    drift: bool = _opt(True, "do not count the rows the Python path scores in the detectors' drift windows "
                             "(repository homes only)", flag="--no-drift")
    job_workers: int = _opt(0, "run queued jobs of the home in this many daemon threads (0: leave them to "
                               "`pynomaly worker`)", zero_ok=True)
    # Issue 23: a learning detector's state is saved to the home as a new version (repository
    # homes only), after this many seconds or records, whichever comes first.
    checkpoint_seconds: float = _opt(60.0, "save a learning detector's state as a new version this often "
                                           "(repository homes)")
    checkpoint_records: int = _opt(100_000, "... or after it learned this many records")
    checkpoint_keep: int = _opt(5, "checkpoint versions kept per detector (older ones are deleted; trained "
                                   "versions are never)")
    learner_lease_seconds: float = _opt(30.0, "one process learns a detector per home: its lease lapses this long "
                                              "after its last renewal (renewed every third of it), e.g. after a "
                                              "crash, and another process may learn it then")

    def __post_init__(self):
        # The roles are checked (users and groups looked up) once, here; the daemon reads
        # `access` (None: no roles, everyone connected may do everything).
        self.access = parse_roles(self.roles, self.roles_file)
        if self.key_file and self.key_command:
            raise ValueError("give either --key-file or --key-command, not both")
        # One check for every numeric setting, before any of it reaches the loops or the core
        # (a negative --max-frame-mb or a zero --frame-timeout would otherwise be taken as is).
        for f in dataclasses.fields(self):
            if f.type not in ("int", "float"):
                continue
            v = getattr(self, f.name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < 0 or (v == 0 and not f.metadata["zero_ok"]):
                shown = v / f.metadata["scale"] if ok else v
                need = ">= 0" if f.metadata["zero_ok"] else "> 0"
                raise ValueError(f"{_flag(f)} must be a finite number {need}, got {shown!r}")
        if self.learner_lease_seconds >= 86400:
            raise ValueError(f"--learner-lease-seconds must be less than 86400 (a day), got {self.learner_lease_seconds!r}")
        if self.metrics_port > 65535:
            raise ValueError(f"--metrics-port must be a TCP port (1 to 65535, or 0 for none), got {self.metrics_port}")


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def build_parser(prog: str = "python -m pynomaly_daemon") -> argparse.ArgumentParser:
    """The daemon's options, one per :class:`Config` field, plus where detectors come from."""
    d = Config()
    p = argparse.ArgumentParser(prog=prog, description="Serve stored pynomaly detectors over a Unix socket.")
    p.add_argument("--home", default=None, help="repository home folder (default: $PYNOMALY_HOME, else the user's data dir)")
    p.add_argument("--models", default=None, metavar="DIR",
                   help="serve model files DIR/<name>/<version>.pnm (native models or export files) instead of the repository")
    for f in dataclasses.fields(Config):
        meta, flag, default = f.metadata, _flag(f), getattr(d, f.name)
        if f.name == "socket_path":
            p.add_argument(flag, dest=f.name, default=None, metavar="PATH",
                           help=f"socket path (default {wire.default_socket_path()})")
        elif f.name in ("allowed_uids", "roles"):
            p.add_argument(flag, dest=f.name, type=meta["type"], action="append", default=None,
                           metavar=meta["metavar"] or "UID", help=meta["help"])
        elif meta["metavar"] is not None:
            p.add_argument(flag, dest=f.name, type=meta["type"], default=default, metavar=meta["metavar"],
                           help=meta["help"])
        elif f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", help=meta["help"])
        else:
            kind = meta["type"] or type(default)
            shown = default / meta["scale"] if default is not None and meta["scale"] != 1.0 else default
            if meta["scale"] != 1.0:
                kind = float
            unit = f" ({meta['unit']})" if meta["unit"] else ""
            metavar = flag.lstrip("-").upper().replace("-", "_")
            p.add_argument(flag, dest=f.name, type=kind, default=shown, metavar=metavar,
                           help=f"{meta['help']}{unit}; default {shown}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def config_from_args(a: argparse.Namespace) -> Config:
    """The :class:`Config` for parsed arguments (values scaled back to their units)."""
    values = {}
    for f in dataclasses.fields(Config):
        v = getattr(a, f.name)
        if f.name == "socket_path":
            v = os.path.abspath(v or wire.default_socket_path())
        elif f.name == "allowed_uids":
            v = frozenset(v) if v else None
        elif f.name == "roles":
            v = tuple(v) if v else None
        elif f.metadata["scale"] != 1.0 and v is not None:
            v = f.metadata["scale"] * v
            if f.type in ("int", int) and math.isfinite(v):
                v = int(v)
        values[f.name] = v
    try:
        return Config(**values)
    except ValueError as e:
        raise SystemExit(f"pynomaly daemon: {e}") from None
