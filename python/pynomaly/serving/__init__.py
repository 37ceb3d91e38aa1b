"""What the serving faces share (the daemon, the HTTP API): where detectors come from
(:mod:`.sources`) and the cache of loaded Scorers with its refresh (:mod:`.cache`).

Imported by the faces only; ``import pynomaly`` does not load it.
"""

from pynomaly.serving.cache import ModelCache
from pynomaly.serving.sources import (
    DetectorSource,
    DetectorUnavailable,
    FolderSource,
    RepositorySource,
    save_to_folder,
)

__all__ = ["ModelCache", "DetectorSource", "DetectorUnavailable", "FolderSource", "RepositorySource", "save_to_folder"]
