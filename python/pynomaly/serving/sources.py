"""Where a serving face (the daemon, the HTTP API) gets detectors from: a small seam with two
implementations.

A source answers three questions: ``get(name, version)`` (a :class:`pynomaly.service.Scorer`),
``latest_version(name)`` and ``list()`` (``pynomaly.wire.DetectorInfo`` of each latest version).
:class:`RepositorySource` asks pynomaly's service layer (the repository under a home folder);
:class:`FolderSource` reads model files from ``DIR/<name>/<version>.pnm``, for edge boxes that
ship detectors as plain files. Both hand back Scorers built by the service, so every kind of
detector is served the same way from either. Sources are synchronous; faces call them from
their threads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Protocol

from pynomaly import service
from pynomaly import wire
from pynomaly._errors import DetectorNotFoundError as DetectorNotFound
from pynomaly._errors import PynomalyError
from pynomaly.domain import NAME_PATTERN, shown


class DetectorUnavailable(PynomalyError):
    """The detector exists but cannot be used for detection (not trained, not active, unreadable)."""


class DetectorSource(Protocol):
    def get(self, name: str, version: Optional[int] = None) -> service.Scorer: ...

    def latest_version(self, name: str) -> int: ...

    def list(self) -> List[wire.DetectorInfo]: ...


class RepositorySource:
    """Detectors of the repository under ``home``, through ``pynomaly.service``."""

    def __init__(self, home: Optional[str] = None):
        self.home = home
        self._listener = None

    def watch(self, callback) -> bool:
        """Have ``callback(name)`` called, from a thread of its own, whenever another process
        saves, activates, archives or deletes detector ``name`` (``callback(None)``: anything
        may have changed, after a lost connection). Only a database home can tell (PostgreSQL
        LISTEN/NOTIFY); for a folder home this returns False and readers keep polling."""
        from pynomaly.store._db import Listener
        from pynomaly.store._home import is_database_url
        from pynomaly.store.repository import Repository

        if not is_database_url(self.home):
            return False
        if self._listener is None:
            self._listener = Listener(self.home, Repository.NOTIFY_CHANNEL, callback)
        return True

    def close(self) -> None:
        """Stop watching (see :meth:`watch`)."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    def get(self, name: str, version: Optional[int] = None) -> service.Scorer:
        return service.load_for_scoring(self.home, name, version)

    def latest_version(self, name: str) -> int:
        """The version an unversioned request gets: the detector's latest, if it may detect."""
        for d in service.list_detectors(self.home):
            if d.name == name:
                if not d.can_detect():
                    raise DetectorUnavailable(f"detector {name!r} cannot detect (status {d.status.value})")
                return int(d.version)
        raise DetectorNotFound.for_name(name, [d.name for d in service.list_detectors(self.home)])

    def list(self) -> list:
        return [
            wire.DetectorInfo(d.name, int(d.version), d.algorithm, int(d.n_features or 0), status=d.status.value)
            for d in service.list_detectors(self.home)
        ]


_VERSION_FILE = re.compile(r"^(\d+)\.pnm$")
_NAME = re.compile(NAME_PATTERN)  # the one rule for names (pynomaly.domain)


class FolderSource:
    """Detectors stored as ``DIR/<name>/<version>.pnm`` files.

    A file is a native model's ``to_bytes()`` (IsolationForest, LOF, KNN) or an export file
    (``pynomaly export``, any algorithm: PyOD, torch, JAX too). Export files holding a pickled
    (PyOD) model are served only with ``trust_pickle`` (``--trust-pickle``): nothing is
    unpickled from a folder its owner has not vouched for. The latest version of a name is
    its highest version number. Writers should write a new version to a temporary name and
    rename it into place (:func:`save_to_folder` does), so a reader never sees half a file.
    """

    def __init__(self, root, *, trust_pickle: bool = False):
        self.root = Path(root)
        self.trust_pickle = trust_pickle

    def _dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name):
            raise DetectorNotFound(f"no detector named {shown(name)} (names are letters, digits, '.', '_', '-')")
        return self.root / name

    def _versions(self, name: str) -> list:
        d = self._dir(name)
        try:
            files = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            raise self._no_detector(name) from None
        versions = sorted(int(m.group(1)) for f in files if (m := _VERSION_FILE.match(f)))
        if not versions:
            raise self._no_detector(name)
        return versions

    def _no_detector(self, name: str) -> DetectorNotFound:
        try:
            known = [n for n in os.listdir(self.root) if _NAME.match(n)]
        except OSError:
            known = []
        return DetectorNotFound.for_name(name, known, str(self.root))

    def latest_version(self, name: str) -> int:
        return self._versions(name)[-1]

    def get(self, name: str, version: Optional[int] = None) -> service.Scorer:
        if version is None:
            version = self.latest_version(name)
        path = self._dir(name) / f"{int(version)}.pnm"
        return service.load_file_for_scoring(path, name, int(version), trust_pickle=self.trust_pickle)

    def list(self) -> list:
        out = []
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return out
        for name in names:
            if not _NAME.match(name):
                continue
            try:
                v = self.get(name).version
            except Exception:  # noqa: BLE001 - an unreadable detector is not listed; get() explains
                continue
            out.append(wire.DetectorInfo(v.name, v.version, v.algorithm, v.n_features))
        return out


def save_to_folder(root, name: str, detector, version: Optional[int] = None, *, algorithm: Optional[str] = None) -> int:
    """Write a fitted detector as the next (or given) version of ``name``; returns the version.

    Native detectors are written as their own ``to_bytes()``; any other kind (give its
    registry ``algorithm``, e.g. "pyod.ECOD", "TorchAutoEncoder") as an export file. The file
    is written to a temporary name, fsynced and renamed, so a daemon reading the folder at the
    same time sees either the previous versions only or the complete new one.
    """
    src = FolderSource(root)
    d = src._dir(name)
    d.mkdir(parents=True, exist_ok=True)
    if version is None:
        try:
            version = src.latest_version(name) + 1
        except DetectorNotFound:
            version = 1
    service.write_model_file(detector, d / f"{int(version)}.pnm", name, algorithm, version=int(version))
    return int(version)
