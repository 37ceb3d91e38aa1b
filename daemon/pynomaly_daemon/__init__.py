"""pynomaly's detection daemon: serves stored detectors over a Unix socket.

Run it with ``python -m pynomaly_daemon [--socket PATH] [--home DIR]`` (or ``pynomaly serve``);
talk to it with ``pynomaly.Client`` or any MessagePack library (see PROTOCOL.md). The layout
of the package is described in server.py's docstring.
"""

from pynomaly.wire import default_socket_path

from .cli import build_parser, main
from .config import Config
from .errors import DetectorNotFound, DetectorUnavailable, RequestError
from .server import Daemon
from pynomaly.serving import FolderSource, RepositorySource, save_to_folder

__all__ = [
    "Config",
    "Daemon",
    "default_socket_path",
    "DetectorNotFound",
    "DetectorUnavailable",
    "RequestError",
    "FolderSource",
    "RepositorySource",
    "save_to_folder",
    "main",
    "build_parser",
]
