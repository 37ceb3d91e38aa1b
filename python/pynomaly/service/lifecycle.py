"""A detector's lifecycle as the faces list and change it: list, show, versions, archive,
activate, delete."""

from __future__ import annotations

from pynomaly.domain import Detector
from pynomaly.service._common import opened


def list_detectors(home) -> list:
    """Every stored detector (Detector entities, by name)."""
    with opened(home) as repo:
        return repo.list()


def overview(home) -> list:
    """Every detector with what a list of them shows, read in one repository session:
    ``[{"detector": Detector, "versions": int, "threshold": latest version's or None,
    "last_result": the newest stored result's metadata or None}]``, by name."""
    with opened(home) as repo:
        out = []
        for d in repo.list():
            versions = repo.versions(d.name)
            results = repo.results(d.name)
            out.append({"detector": d, "versions": len(versions),
                        "threshold": versions[-1]["threshold"] if versions else None,
                        "last_result": results[-1] if results else None})
        return out


def show(home, name: str) -> dict:
    """A detector's entity as a dict, plus ``versions`` (metadata of each) and ``results``
    (the stored detection results' metadata)."""
    with opened(home) as repo:
        d = repo.get(name)
        out = d.to_dict()
        out["versions"] = repo.versions(name)
        out["results"] = repo.results(name)
        return out


def versions(home, name: str) -> list:
    """Metadata of every stored version of ``name`` (dicts, oldest first)."""
    with opened(home) as repo:
        return repo.versions(name)


def archive(home, name: str) -> Detector:
    """Retire a detector: it keeps its versions but can no longer detect."""
    with opened(home) as repo:
        return repo.set_status(name, "archive")


def activate(home, name: str) -> Detector:
    """Make a trained or archived detector detect again."""
    with opened(home) as repo:
        return repo.set_status(name, "activate")


def delete(home, name: str) -> int:
    """Delete a detector with its versions and results; returns the number of versions."""
    with opened(home) as repo:
        return repo.delete(name)

