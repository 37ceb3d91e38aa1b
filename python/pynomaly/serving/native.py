"""The daemon's native parts, from the core (the wire format itself loads no native code, so a
socket client never loads the core):

- :data:`fast_detect`: the reader and writer of the commonest frames (small raw-rows Detect
  requests for a native isolation forest, and their DetectReply), bit-equal to msgspec's
  encoding of the wire's Structs (python/src/fastpath.cpp); it scores ``_core.ServedForest``
  objects (see :meth:`pynomaly.service.Scorer.native`).
- :data:`NetLoop`: the native connection loop (python/src/netloop.hpp): epoll threads that serve
  the protocol's sockets, answer what ``fast_detect`` would and hand every other frame to the
  daemon.
"""

from pynomaly import _core

fast_detect = _core.fast_detect
NetLoop = _core.NetLoop

__all__ = ["fast_detect", "NetLoop"]
