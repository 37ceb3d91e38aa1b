"""What a ``home`` names: a folder (the embedded SQLite repository) or a PostgreSQL database.

A home is given as ``--home`` or ``PYNOMALY_HOME``: a path, or a libpq URL
(``postgresql://user@host/db?host=/socket/dir&port=N``) for a repository shared by several
processes and machines. Files that belong to one installation rather than to the shared
catalogue (the API's token secrets and users, the pickle-signing key) live in
:func:`local_dir`: the folder itself for a folder home; for a database home
``$PYNOMALY_CONFIG_DIR``, else a per-user folder named after the database, so that replicas
which must agree on them (several API servers behind one balancer) can be given the same
files, e.g. one Kubernetes Secret mounted at ``PYNOMALY_CONFIG_DIR``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(home) -> bool:
    """True when ``home`` names a PostgreSQL database rather than a folder."""
    return isinstance(home, str) and home.startswith(_URL_SCHEMES)


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    scheme, _, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


def local_dir(home) -> Path:
    """The folder for a home's installation-local files (see the module's docstring)."""
    if home is None:  # PYNOMALY_HOME may itself be a URL
        from .repository import default_home

        home = default_home()
    if not is_database_url(home):
        return Path(home).expanduser()
    configured = os.environ.get("PYNOMALY_CONFIG_DIR")
    if configured:
        return Path(configured).expanduser()
    # Keyed by the URL without its password: changing the password keeps the same files.
    tag = hashlib.sha256(redacted(home).encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "pynomaly"
    return base / "databases" / tag
