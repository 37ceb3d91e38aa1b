"""The HTTP server's settings: declared once, read from the command line or the environment.

``pynomaly api --workers N`` starts N processes that each build the app from
``PYNOMALY_API_SETTINGS`` (this dataclass as JSON), so every worker runs with the same settings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
from typing import Dict, Optional

ENV = "PYNOMALY_API_SETTINGS"


@dataclasses.dataclass(frozen=True)
class Settings:
    home: Optional[str] = None  # repository folder (None: $PYNOMALY_HOME or the user data folder)
    host: str = "127.0.0.1"
    port: int = 8000
    uds: Optional[str] = None  # listen on a Unix socket instead of host:port
    workers: int = 1
    auth: bool = True  # False: no tokens checked, every caller is admin (loopback or a socket only)
    allow_open_network: bool = False  # let auth=False bind to a non-loopback address anyway
    public_keys: Dict[str, str] = dataclasses.field(default_factory=dict)  # kid -> PEM file (IdP tokens)
    issuer: str = "pynomaly"
    audience: str = "pynomaly-api"
    role_claim: str = "role"
    max_body_bytes: int = 256 * 1024 * 1024
    # An uploaded table once read (float64), and its columns: checked from the file's headers
    # before reading, since a few compressed megabytes may declare gigabytes (issue 25).
    max_dataset_bytes: int = 256 * 1024 * 1024
    max_dataset_columns: int = 10_000
    upload_dir: Optional[str] = None  # where uploads wait while read (None: the system temp folder)
    request_timeout_s: float = 60.0
    cache_bytes: int = 2 * 1024 ** 3
    refresh_interval_s: float = 1.0  # how soon a newly saved version is served
    threads: int = 0  # scoring threads for large requests (0: the number of CPUs)
    inline_cells: int = 16384  # requests with at most this many values are scored on the event loop
    job_workers: int = 1  # background-job workers in each server process (0: leave jobs to `pynomaly worker`)
    header_timeout_s: float = 10.0  # a request's head must arrive within this (pynomaly_api.guard)
    max_client_connections: int = 64  # open connections per client address and process (0: no cap)
    # Issue 23: a streaming detector learning over HTTP is saved as a new version this often
    # (seconds or records, whichever first), keeping the newest checkpoint_keep checkpoints.
    checkpoint_seconds: float = 60.0
    checkpoint_records: int = 100_000
    checkpoint_keep: int = 5
    learner_lease_seconds: float = 30.0  # one learner per detector per home: its lease outlives its last renewal this long
    # Issue 24: count the rows every path scores in the detectors' drift windows (--no-drift: not).
    drift: bool = True

    def check(self) -> "Settings":
        """Self, or ValueError naming the first setting that cannot work."""
        if not (0 < self.port < 65536) and self.uds is None:
            raise ValueError(f"--port must be 1..65535, got {self.port}")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        for name in ("max_body_bytes", "cache_bytes", "max_dataset_bytes", "max_dataset_columns"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.checkpoint_records < 1 or self.checkpoint_keep < 1:
            raise ValueError("checkpoint_records and checkpoint_keep must be at least 1")
        for name in ("request_timeout_s", "refresh_interval_s", "header_timeout_s", "checkpoint_seconds",
                     "learner_lease_seconds"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        if self.learner_lease_seconds >= 86400:
            raise ValueError(f"learner_lease_seconds must be less than 86400 (a day), got {self.learner_lease_seconds!r}")
        if self.upload_dir is not None and not os.path.isdir(self.upload_dir):
            raise ValueError(f"--upload-dir {self.upload_dir!r} is not a folder")
        if self.threads < 0 or self.inline_cells < 0 or self.job_workers < 0 or self.max_client_connections < 0:
            raise ValueError("threads, inline_cells, job_workers and max_client_connections must be 0 or more")
        if not self.auth and self.uds is None and not _loopback(self.host) and not self.allow_open_network:
            raise ValueError(
                f"refusing to serve {self.host} without authentication: anyone who can reach it could train, "
                "delete and read every detector. Drop --no-auth (and give clients tokens: `pynomaly token create`), "
                "bind to 127.0.0.1, or add --allow-open-network if something in front of this server authenticates"
            )
        return self

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> "Settings":
        raw = os.environ.get(ENV)
        return cls(**json.loads(raw)).check() if raw else cls().check()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
