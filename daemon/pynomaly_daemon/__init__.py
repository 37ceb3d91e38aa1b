"""pynomaly's detection daemon: serves stored detectors over a Unix socket.

Run it with ``python -m pynomaly_daemon [--socket PATH] [--home DIR]`` (or ``pynomaly serve``);
talk to it with ``pynomaly.Client`` or any MessagePack library (see PROTOCOL.md).
"""

from .server import Config, Daemon, default_socket_path
from .sources import DetectorNotFound, DetectorUnavailable, FolderSource, RepositorySource, save_to_folder
from .cli import main, build_parser

__all__ = [
    "Config",
    "Daemon",
    "default_socket_path",
    "DetectorNotFound",
    "DetectorUnavailable",
    "FolderSource",
    "RepositorySource",
    "save_to_folder",
    "main",
    "build_parser",
]
