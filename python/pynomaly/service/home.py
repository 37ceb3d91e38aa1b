"""The home itself: where it is, its health (doctor), its keys (an encrypted home's key source,
rotation, re-encryption) and its audit trail. Plain functions over a ``home`` (a folder, a
database URL, None for the default, or an open Repository)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pynomaly._errors import ArtifactIntegrityError, InvalidInputError
from pynomaly.service._common import Progress, opened
from pynomaly.service.usecases import model_from_bytes
from pynomaly.store.repository import Repository


def check_reachable(home) -> None:
    """Raise :class:`~pynomaly._errors.RepositoryUnavailableError` if a database home's server
    does not answer now (one ``SELECT 1`` on a fresh connection); a folder home always is.
    For readiness probes: cheap, and it never creates or migrates anything."""
    from pynomaly.store._home import is_database_url

    if is_database_url(home):
        from pynomaly.store import _db

        with _db.Database(home) as db:
            db.ping()


def home_path(home):
    """What a ``home`` argument means: its folder (a Path, created if absent), or a database
    home's URL (a str; its tables created if absent). Installation-local files go in
    ``pynomaly._home.local_dir`` of it, never in ``home_path(home)`` itself."""
    with opened(home) as repo:
        return repo.home


def doctor(home, repair: bool = False) -> dict:
    """Check a home (database, artifacts, version numbers); with ``repair``, fix what can be
    fixed without losing anything. See :meth:`pynomaly.repository.Repository.check`."""
    with opened(home) as repo:
        return repo.check(repair=repair, load=_check_loads)


def _check_loads(algorithm: str, fmt: str, blob: bytes) -> None:
    """Doctor's load of a stored (non-pickle) artifact: raise unless it makes a model."""
    from pynomaly.service.transfer import artifact_format

    if fmt != artifact_format(algorithm):  # e.g. a pickle stored as "native": never unpickled
        raise ArtifactIntegrityError(f"format {fmt!r} is not how {algorithm!r} is stored")
    if fmt == "native":
        model_from_bytes(algorithm, blob, "artifact")
        return
    from pynomaly.estimators.adapters import MissingExtraError, require

    try:
        require(fmt, fmt)
        model_from_bytes(algorithm, blob, "artifact")
    except (MissingExtraError, InvalidInputError):
        pass  # checked where its extra is installed; one wrapping the user's own code needs that code


# -- encryption at rest --------------------------------------------------------------------
def key_source(key_file=None, key_command=None, *, prefix: str = "PYNOMALY_"):
    """Where a key comes from: ``key_file`` or ``key_command``, else the environment
    (``PYNOMALY_KEY_FILE``, ``PYNOMALY_KEY_COMMAND``, ``PYNOMALY_KEY``; another ``prefix``
    reads e.g. ``PYNOMALY_NEW_KEY``); None when nothing says. See :mod:`pynomaly.crypto`."""
    from pynomaly.store.crypto import key_source as _key_source

    return _key_source(key_file, key_command, prefix=prefix)


def create_key_file(path) -> Path:
    """Write a new random key (base64 of 32 bytes) to ``path``, mode 0600; refuses to overwrite."""
    import os

    from pynomaly.store.crypto import new_key_text

    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInputError(f"{path} exists already; not overwriting a key") from None
    except OSError as e:
        raise InvalidInputError(f"cannot create the key file {path}: {e}") from None
    try:
        os.write(fd, new_key_text().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def init_home(home, *, encrypt: bool = False, key=None):
    """Create a home (a folder; or a database home's tables); with ``encrypt``, make it an
    encrypted one whose data key is wrapped by the key from ``key`` (a :func:`key_source`;
    default: the environment; folder homes only). Returns :func:`home_path`.

    Only an empty home can be made encrypted (move detectors over with export and import).
    """
    from pynomaly._errors import KeyRequiredError

    if encrypt:
        key = key or key_source()
        if key is None:
            raise KeyRequiredError(
                "an encrypted home needs a key-encryption key kept outside it: --key-file PATH (created if absent), "
                "--key-command CMD, or PYNOMALY_KEY (base64 of 32 random bytes)"
            )
    repo = home if isinstance(home, Repository) else Repository(home, key=key)
    try:
        if encrypt:
            repo.encrypt_home(key)
        from pynomaly.store._home import is_database_url

        if is_database_url(repo.home):
            # The pickle-signing key of a database home lives in local_dir (PYNOMALY_CONFIG_DIR),
            # not in the database; made now, so it can be handed to every replica before any
            # of them signs with a key of its own (deploy/README.md).
            repo._key()
        return repo.home
    finally:
        if repo is not home:
            repo.close()


def is_encrypted(home) -> bool:
    """Whether ``home`` is an encrypted home."""
    with opened(home) as repo:
        return repo.encrypted


def check_key(home) -> None:
    """For an encrypted home, raise KeyRequiredError (naming what is missing or wrong) unless
    its key is given; nothing for a plain home."""
    with opened(home) as repo:
        repo.require_key()


def rotate_key(home, new_key) -> list:
    """Wrap the home's data key(s) with the key from ``new_key`` (a :func:`key_source`);
    nothing else is rewritten. Needs the current key too. Returns the data key ids."""
    with opened(home) as repo:
        return repo.rewrap_key(new_key)


def reencrypt(home, progress: Progress = None) -> dict:
    """Seal every artifact and field of an encrypted home under a new data key (resumable;
    see :meth:`pynomaly.repository.Repository.reencrypt`)."""
    with opened(home) as repo:
        return repo.reencrypt(progress=None if progress is None else (lambda msg: progress(msg, None)))


# -- the audit trail -----------------------------------------------------------------------
def audit_record(home, *, actor: Optional[str] = None, action: str, target: str = "", origin: str = "",
                 outcome: str = "ok", detail: Optional[dict] = None) -> dict:
    """Append one entry to the home's audit trail; every face calls this for each
    state-changing action and each refused access.

    Parameters
    ----------
    home : folder, None or Repository
    actor : str, optional
        Who: ``"uid=1000(alice)"``, ``"token:alice"``, ...; default this process's user.
    action : str
        What: ``"train"``, ``"activate"``, ``"archive"``, ``"delete"``, ``"import"``,
        ``"export"``, ``"keys.rotate"``, ``"keys.reencrypt"``, ``"token.create"``,
        ``"refused"``, ... (at most 64 characters).
    target : str
        What it was done to (a detector name, ``"name@version"``, an op).
    origin : str
        From where: ``"cli host=..."``, ``"daemon peer pid=.. uid=.."``, ``"http 10.0.0.7"``.
    outcome : str
        ``"ok"``, ``"forbidden"``, or ``"error: <message>"``.
    detail : dict, optional
        Anything else, JSON-serialisable.

    Returns the entry (a dict with ``seq``, ``at``, ``hash``, ...). Entries are hash-chained:
    see :func:`audit_verify`.
    """
    from pynomaly.store.audit import default_actor

    with opened(home) as repo:
        return repo.audit_append(actor=actor or default_actor(), action=action, target=target, origin=origin,
                                 outcome=outcome, detail=detail)


def audit_entries(home, since=None) -> list:
    """Audit entries (dicts, oldest first); ``since``: a datetime, an ISO date/time or an age
    such as ``"12h"`` or ``"7d"``."""
    from pynomaly.store.audit import parse_since

    if isinstance(since, str):
        since = parse_since(since)
    with opened(home) as repo:
        return repo.audit_entries(since)


def audit_verify(home) -> dict:
    """Check the audit chain: ``{"ok": bool, "entries": n, "problems": [...]}``."""
    with opened(home) as repo:
        return repo.audit_verify()

