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
import stat
import sys
import uuid
from pathlib import Path

from pynomaly._errors import RepositoryError

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


def default_home():
    """``$PYNOMALY_HOME`` (a folder as a Path; a PostgreSQL URL as the string itself), else the
    per-user data folder (XDG on Linux, Application Support on macOS, %LOCALAPPDATA% on
    Windows) + ``pynomaly``."""
    env = os.environ.get("PYNOMALY_HOME")
    if env:
        return env if is_database_url(env) else Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "pynomaly"


def prepare(home):
    """What a ``home`` argument names, ready to open: None is :func:`default_home`; a database
    URL stays the string as given (the password too: replicas reconnect with it); anything
    else is a folder, created (mode 0700, with its ``artifacts/``) if absent, as a Path. An
    object that already holds a resolved home (a Repository) gives its ``home``."""
    if home is None:
        home = default_home()
    elif not isinstance(home, (str, os.PathLike)):
        home = home.home
    if is_database_url(home):
        return home
    folder = Path(home).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (folder / "artifacts").mkdir(exist_ok=True, mode=0o700)
    except OSError as e:
        raise RepositoryError(f"cannot create the pynomaly home folder {str(folder)!r}: {e}") from None
    return folder


def local_dir(home) -> Path:
    """The folder for a home's installation-local files (see the module's docstring)."""
    if home is None:  # PYNOMALY_HOME may itself be a URL
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


def signing_key(folder) -> bytes:
    """The installation's 32-byte HMAC key, ``folder/secret.key`` (made, mode 0600, if absent).

    It signs what must not be trusted just because it is stored: pickled artifacts, and alert
    rules that run commands or name files. For a database home ``folder`` is :func:`local_dir`,
    never the database: whoever can write rows must not thereby be able to make a replica
    unpickle them or run a command. Replicas share it through PYNOMALY_CONFIG_DIR (the same
    file mounted on each).
    """
    from pynomaly.store._files import private_enough

    path = Path(folder) / "secret.key"
    try:
        st = path.stat()
    except FileNotFoundError:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise RepositoryError(f"cannot create the folder for {path}: {e}") from None
        # Create under a temporary name, then link: concurrent creators agree on one key.
        tmp = path.parent / f".key-{os.getpid()}-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        st = path.stat()
    if not private_enough(st):
        raise RepositoryError(
            f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
        )
    key = path.read_bytes()
    if len(key) != 32:
        raise RepositoryError(f"{path} is not a pynomaly key (expected 32 bytes, found {len(key)})")
    return key
