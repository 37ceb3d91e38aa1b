"""Writing files that readers may open at any moment: atomically, durably. Used by the
repository, the export files and the model files of the daemon's folders."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def zstd():
    """The zstandard module (imported when first needed: scoring never needs it)."""
    import zstandard

    return zstandard


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one.

    ``mode`` is the new file's permissions before the umask (0o600 for secrets: the file
    never exists with wider ones, not even for a moment).
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def private_enough(st: os.stat_result) -> bool:
    """Whether a key file's mode keeps it to its owner: no bits for others, and group bits
    only read, and only on a file owned by root (PostgreSQL's rule for its key: how a
    Kubernetes Secret reaches a pod that runs as a user of the fsGroup, root:fsGroup 0440)."""
    import stat

    if os.name != "posix":
        return True
    if st.st_mode & stat.S_IRWXO:
        return False
    group = st.st_mode & stat.S_IRWXG
    return not group or (st.st_uid == 0 and group == stat.S_IRGRP)
