"""Training runs started from the pages and their progress."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Optional

from pynomaly import service

from ..app import ServerState, status_of


class Jobs:
    """Training runs started from the pages, with their progress, kept as small JSON files in
    the home (``web-jobs/``) so that every worker process of the server can show any run
    (background jobs with their own API come in a later issue). Files older than a week go."""

    FOLDER = "web-jobs"
    KEEP_S = 7 * 86400

    def __init__(self):
        self._running: set = set()

    def _path(self, home, jid: str) -> Path:
        return Path(home) / self.FOLDER / f"{jid}.json"

    def _write(self, home, job: dict) -> None:
        from pynomaly._files import atomic_write

        atomic_write(self._path(home, job["id"]), json.dumps(job).encode(), mode=0o600)

    def get(self, home, jid: str) -> Optional[dict]:
        if not jid.isalnum() or len(jid) > 64:
            return None
        try:
            return json.loads(self._path(home, jid).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _forget_old(self, home) -> None:
        now = time.time()
        for f in (Path(home) / self.FOLDER).glob("*.json"):
            with contextlib.suppress(OSError):
                if now - f.stat().st_mtime > self.KEEP_S:
                    f.unlink()

    def start(self, st: ServerState, name: str, audit: dict, **kwargs) -> str:
        """Train ``name`` in the server's threads; ``audit`` (actor, origin) records the
        outcome in the home's audit trail when it is known."""
        jid = uuid.uuid4().hex
        job = {"id": jid, "name": name, "stage": "queued", "fraction": None, "done": False, "error": None,
               "started": time.time(), "finished": None}
        (Path(st.home) / self.FOLDER).mkdir(mode=0o700, exist_ok=True)
        self._forget_old(st.home)
        self._write(st.home, job)
        last = [0.0]

        def progress(stage, fraction=None):
            job["stage"], job["fraction"] = stage, fraction
            now = time.monotonic()
            if now - last[0] > 0.25:  # a page reloads each second: a few writes a second are plenty
                last[0] = now
                self._write(st.home, job)

        def run():
            entry = dict(audit, action="train", target=name, outcome="ok",
                         detail={"algorithm": kwargs.get("algorithm"), "dataset_id": kwargs.get("dataset_id")})
            try:
                d = service.train(st.home, name, None, progress=progress, **kwargs)
                job["stage"] = "done"
                entry["detail"]["version"] = d.version
            except Exception as e:  # noqa: BLE001 - shown on the run's page
                job["error"] = status_of(e)[1]
                entry["outcome"] = f"error: {job['error']}"[:300]
            finally:  # the new version is served within the cache's refresh interval, as after the API's train
                st.audit.write(entry)
                job["done"], job["finished"] = True, time.time()
                self._write(st.home, job)

        future = st.run(run)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return jid


JOBS = Jobs()
