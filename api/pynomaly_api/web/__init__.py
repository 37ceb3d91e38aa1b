"""The web pages of the HTTP face: sign in at ``/``, then detectors (sorted, filtered, their
versions compared, their drift), detection results with their score histogram, history, training,
datasets, jobs, alerts, the audit trail and health under ``/ui/``. Same server, tokens,
roles and Scorer as the API; plain HTML with SVG charts drawn on the server and a few lines
of our own JavaScript (no CDN, no build step)."""

from __future__ import annotations

from pathlib import Path


def routes() -> list:
    """The pages' routes (plain Starlette: they need none of FastAPI's machinery)."""
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from . import alerts_page, audit_page, compare, datasets_page, drift_page, health, jobs_page, pages

    return [
        Route("/", pages.signin_page, methods=["GET"]),
        Route("/ui/signin", pages.signin, methods=["POST"]),
        Route("/ui/signout", pages.signout, methods=["POST"]),
        Route("/ui/detectors", pages.detectors, methods=["GET"]),
        Route("/ui/detectors/{name}", pages.detector, methods=["GET"]),
        Route("/ui/detectors/{name}/history", pages.history, methods=["GET"]),
        Route("/ui/detectors/{name}/compare", compare.compare, methods=["GET"]),
        Route("/ui/detectors/{name}/drift", drift_page.drift_panel, methods=["GET"]),
        Route("/ui/detectors/{name}/{action}", pages.detector_action, methods=["POST"]),
        Route("/ui/detect", pages.detect_page, methods=["GET"]),
        Route("/ui/detect", pages.detect, methods=["POST"]),
        Route("/ui/results/{result_id}", pages.result_page, methods=["GET"]),
        Route("/ui/results/{result_id}/download", pages.download, methods=["GET"]),
        Route("/ui/train", pages.train_page, methods=["GET"]),
        Route("/ui/train", pages.train, methods=["POST"]),
        Route("/ui/train/{job_id}", pages.train_job, methods=["GET"]),
        Route("/ui/datasets", datasets_page.datasets, methods=["GET"]),
        Route("/ui/datasets/{dataset_id}", datasets_page.dataset, methods=["GET"]),
        Route("/ui/datasets/{dataset_id}/delete", datasets_page.delete, methods=["POST"]),
        Route("/ui/jobs", jobs_page.jobs_page, methods=["GET"]),
        Route("/ui/jobs/{job_id}/cancel", jobs_page.cancel, methods=["POST"]),
        Route("/ui/alerts", alerts_page.alerts_page, methods=["GET"]),
        Route("/ui/alerts/add", alerts_page.add, methods=["POST"]),
        Route("/ui/alerts/{rule_id}/remove", alerts_page.remove, methods=["POST"]),
        Route("/ui/alerts/{rule_id}/approve", alerts_page.approve, methods=["POST"]),
        Route("/ui/audit", audit_page.audit_page, methods=["GET"]),
        Route("/ui/health", health.health, methods=["GET"]),
        Mount("/ui/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static"),
    ]


__all__ = ["routes"]
