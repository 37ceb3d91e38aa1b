"""What the serving faces share (the daemon, the HTTP API): where detectors come from
(:mod:`.sources`), the cache of loaded Scorers with its refresh (:mod:`.cache`), and the data
plane every face's detections take (:mod:`.dataplane`: lookup, score, decide, observe).

Imported by the faces only; ``import pynomaly`` does not load it.
"""

from pynomaly.serving.cache import ModelCache
from pynomaly.serving.dataplane import DataPlane
from pynomaly.serving.preload import preload
from pynomaly.serving.sources import (
    DetectorSource,
    DetectorUnavailable,
    FolderSource,
    RepositorySource,
    save_to_folder,
)

__all__ = ["ModelCache", "DataPlane", "preload", "DetectorSource", "DetectorUnavailable", "FolderSource", "RepositorySource", "save_to_folder"]
