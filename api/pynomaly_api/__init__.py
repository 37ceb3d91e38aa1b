"""pynomaly's HTTP face: the Open Inference Protocol v2 and the detection API over the
service layer's Scorer, with JWT tokens and roles.

Installed with the ``http`` extra (``pip install "pynomaly[http]"``); run it with
``pynomaly api``. ``create_app(Settings(...))`` gives the ASGI app for any ASGI server.
"""

from .settings import Settings


def create_app(settings=None):
    """The ASGI app (FastAPI) for ``settings``; see :mod:`pynomaly_api.app`."""
    from .app import create_app as make

    return make(settings)


__all__ = ["Settings", "create_app"]
