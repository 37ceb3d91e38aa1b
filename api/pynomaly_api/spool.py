"""Where uploaded files wait on disk while they are read: one folder (``upload_dir``, default the
system temp folder), one recognisable name per file, the size checks made before any reading,
and the answers for a full disk.

A server killed in the middle of an upload leaves its file behind; :func:`clean_stale` removes
such files when a server starts. Their names carry the writer's pid, so a file of a live
server (another worker sharing the folder) is left alone unless it is older than any request
could be.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from pynomaly.store import dataio

from .errors import HTTPError

log = logging.getLogger("pynomaly_api")

PREFIX = "pynomaly-upload-"
STALE_AFTER_S = 3600.0  # an upload's file older than this is no request's any more
_FULL = (errno.ENOSPC, errno.EDQUOT)


def folder(settings) -> str:
    return settings.upload_dir or tempfile.gettempdir()


@contextlib.contextmanager
def disk_full_is_507(what: str):
    """Answer 507 Insufficient Storage, with the reason, for a full disk (or quota) met in the block."""
    try:
        yield
    except OSError as e:
        if e.errno not in _FULL:
            raise
        raise HTTPError(507, f"no room left on the server to store {what}: {e.strerror}; free some space, "
                             f"or point the server's upload_dir (--upload-dir) elsewhere") from None


@contextlib.contextmanager
def upload_file(data: bytes, suffix: str, settings):
    """The upload's bytes as a file of the spool folder, named with the kind's suffix (what the
    readers go by), refused with 413 if its table is larger once read than the server's
    ``max_dataset_bytes`` / ``max_dataset_columns`` allow; removed afterwards."""
    with disk_full_is_507("the upload"):
        fd, tmp = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=suffix, dir=folder(settings))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            os.unlink(tmp)
            raise
    try:
        if suffix != ".pnx":
            check_size(tmp, settings)
        yield tmp
    finally:
        os.unlink(tmp)


def check_size(path: str, settings) -> None:
    """413 for a table whose headers declare more than the server reads (dataio.check_table)."""
    try:
        dataio.check_table(path, settings.max_dataset_bytes, settings.max_dataset_columns)
    except dataio.DataTooLargeError as e:
        flag = "--max-dataset-columns" if "columns" in e.limit else "--max-dataset"
        raise HTTPError(413, f"{e} (`pynomaly api {flag}` raises it)") from None


def clean_stale(settings, now: Optional[float] = None) -> int:
    """Remove upload files left by servers that died mid-upload (their pid is gone), or older
    than :data:`STALE_AFTER_S`; returns how many."""
    now = time.time() if now is None else now
    removed = 0
    for p in Path(folder(settings)).glob(f"{PREFIX}*"):
        try:
            pid = int(p.name[len(PREFIX):].split("-", 1)[0])
        except ValueError:
            pid = None
        try:
            st = p.lstat()
            if not p.is_file() or p.is_symlink():
                continue
            if (pid is not None and _alive(pid)) and now - st.st_mtime < STALE_AFTER_S:
                continue
            p.unlink()
            removed += 1
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    if removed:
        log.info("removed %d upload file(s) left by servers that stopped mid-upload in %s", removed,
                 folder(settings))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
