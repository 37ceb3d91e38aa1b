"""Where the daemon gets detectors from: a small seam with two implementations.

A source answers three questions: ``get(name, version)`` (a fitted detector and its record),
``latest_version(name)`` and ``list()``. :class:`RepositorySource` asks pynomaly's service
layer (the SQLite repository under a home folder); :class:`FolderSource` reads model files
exported with ``to_bytes()`` from ``DIR/<name>/<version>.pnm``, for edge boxes that ship
detectors as plain files. Sources are synchronous; the daemon calls them from its threads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Protocol, Tuple


class DetectorNotFound(LookupError):
    """No detector of that name, or no such version."""


class DetectorUnavailable(RuntimeError):
    """The detector exists but cannot be used for detection (not trained, not active, unreadable)."""


@dataclass(frozen=True)
class SourceRecord:
    """The least the daemon needs to know about a stored detector version."""

    name: str
    version: int
    algorithm: str
    n_features: int


class DetectorSource(Protocol):
    def get(self, name: str, version: Optional[int] = None) -> Tuple[Any, Any]: ...

    def latest_version(self, name: str) -> int: ...

    def list(self) -> List[Any]: ...


def _translate(exc: BaseException) -> BaseException:
    """Map the repository's exceptions onto the two the daemon distinguishes.

    pynomaly.repository raises DetectorNotFoundError (a KeyError); DetectorNotReadyError
    (not ACTIVE), ArtifactIntegrityError and RepositoryError mean the detector exists but
    cannot be served now. Matched by name so this module needs no import of the repository.
    """
    name = type(exc).__name__
    if isinstance(exc, (DetectorNotFound, DetectorUnavailable)):
        return exc
    if "NotFound" in name or isinstance(exc, (KeyError, LookupError, FileNotFoundError)):
        return DetectorNotFound(str(exc).strip("'\""))
    if any(k in name for k in ("NotReady", "Integrity", "Format", "Repository", "Signature")):
        return DetectorUnavailable(str(exc))
    return exc


class RepositorySource:
    """Detectors of the repository under ``home``, through ``pynomaly.service``.

    The service module is imported on first use, so the daemon starts (and can serve a
    :class:`FolderSource`) even where the repository layer is not installed.
    """

    def __init__(self, home: Optional[str] = None):
        self.home = home

    def _service(self):
        from pynomaly import service  # lazy: the repository layer and its dependencies

        return service

    def get(self, name: str, version: Optional[int] = None):
        try:
            return self._service().load_for_scoring(self.home, name, version)
        except Exception as e:  # noqa: BLE001 - translated, not swallowed
            raise _translate(e) from e

    def latest_version(self, name: str) -> int:
        """The version an unversioned request gets: the detector's latest, if it may detect."""
        try:
            for d in self._service().list_detectors(self.home):
                if d.name == name:
                    can = getattr(d, "can_detect", None)
                    if can is not None and not can():
                        raise DetectorUnavailable(f"detector {name!r} cannot detect (status {d.status.value})")
                    return int(d.version)
        except Exception as e:  # noqa: BLE001 - translated, not swallowed
            raise _translate(e) from e
        raise DetectorNotFound(f"no detector named {name!r}")

    def list(self) -> list:
        try:
            return list(self._service().list_detectors(self.home))
        except Exception as e:  # noqa: BLE001
            raise _translate(e) from e


_KINDS = {b"IFOREST\0": ("IsolationForest", "IsolationForest")}
_VERSION_FILE = re.compile(r"^(\d+)\.pnm$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class FolderSource:
    """Detectors stored as ``DIR/<name>/<version>.pnm`` files written by ``to_bytes()``.

    The latest version of a name is its highest version number. Writers should write a new
    version to a temporary name and rename it into place, so a reader never sees half a file.
    """

    def __init__(self, root):
        self.root = Path(root)

    def _dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name):
            raise DetectorNotFound(f"no detector named {name!r} (names are letters, digits, '.', '_', '-')")
        return self.root / name

    def _versions(self, name: str) -> list:
        d = self._dir(name)
        try:
            files = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            raise DetectorNotFound(f"no detector named {name!r}") from None
        versions = sorted(int(m.group(1)) for f in files if (m := _VERSION_FILE.match(f)))
        if not versions:
            raise DetectorNotFound(f"no detector named {name!r}")
        return versions

    def latest_version(self, name: str) -> int:
        return self._versions(name)[-1]

    def get(self, name: str, version: Optional[int] = None):
        import pynomaly

        if version is None:
            version = self.latest_version(name)
        path = self._dir(name) / f"{int(version)}.pnm"
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise DetectorNotFound(f"detector {name!r} has no version {version}") from None
        kind = _KINDS.get(blob[12:20])
        if kind is None:
            raise DetectorUnavailable(f"{path} is not a model file this daemon can load")
        try:
            detector = getattr(pynomaly, kind[1]).from_bytes(blob)
        except pynomaly.ModelFormatError as e:
            raise DetectorUnavailable(f"{path}: {e}") from None
        record = SourceRecord(name, int(version), kind[0], int(detector.n_features_in_))
        return record, detector

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
                out.append(self.get(name)[0])
            except (DetectorNotFound, DetectorUnavailable):
                continue
        return out


def save_to_folder(root, name: str, detector, version: Optional[int] = None) -> int:
    """Write ``detector.to_bytes()`` as the next (or given) version of ``name``; returns the version.

    The file is written to a temporary name, fsynced and renamed, so a daemon reading the
    folder at the same time sees either the previous versions only or the complete new one.
    """
    src = FolderSource(root)
    d = src._dir(name)
    d.mkdir(parents=True, exist_ok=True)
    if version is None:
        try:
            version = src.latest_version(name) + 1
        except DetectorNotFound:
            version = 1
    tmp = d / f".{version}.pnm.tmp"
    with open(tmp, "wb") as f:
        f.write(detector.to_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / f"{version}.pnm")
    return int(version)
