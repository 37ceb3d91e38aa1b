"""The web pages of the HTTP face: sign in at ``/``, then detectors, detection results with
their score histogram, history, training and health under ``/ui/``. Same server, tokens,
roles and Scorer as the API; plain HTML with SVG charts drawn on the server and a few lines
of our own JavaScript (no CDN, no build step)."""

from __future__ import annotations

from pathlib import Path


def routes() -> list:
    """The pages' routes (plain Starlette: they need none of FastAPI's machinery)."""
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from . import pages

    return [
        Route("/", pages.signin_page, methods=["GET"]),
        Route("/ui/signin", pages.signin, methods=["POST"]),
        Route("/ui/signout", pages.signout, methods=["POST"]),
        Route("/ui/detectors", pages.detectors, methods=["GET"]),
        Route("/ui/detectors/{name}", pages.detector, methods=["GET"]),
        Route("/ui/detectors/{name}/history", pages.history, methods=["GET"]),
        Route("/ui/detectors/{name}/{action}", pages.detector_action, methods=["POST"]),
        Route("/ui/detect", pages.detect_page, methods=["GET"]),
        Route("/ui/detect", pages.detect, methods=["POST"]),
        Route("/ui/results/{result_id}", pages.result_page, methods=["GET"]),
        Route("/ui/results/{result_id}/download", pages.download, methods=["GET"]),
        Route("/ui/train", pages.train_page, methods=["GET"]),
        Route("/ui/train", pages.train, methods=["POST"]),
        Route("/ui/train/{job_id}", pages.train_job, methods=["GET"]),
        Route("/ui/health", pages.health, methods=["GET"]),
        Mount("/ui/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static"),
    ]


__all__ = ["routes"]
