"""Training runs started from the pages: jobs of the home's queue (:mod:`pynomaly.jobs`, the
same queue as ``pynomaly train --background`` and ``POST /api/v1/jobs``), run by the server's
job workers (``pynomaly api --job-workers``, one by default) or by ``pynomaly worker``, and
shown as the page's view of a job."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from pynomaly.service import jobs
from pynomaly._errors import InvalidInputError

from ..state import ServerState

_FINISHED = ("succeeded", "failed", "cancelled")


def _epoch(iso: Optional[str]) -> Optional[float]:
    return datetime.fromisoformat(iso).timestamp() if iso else None


class Jobs:
    def get(self, home, jid: str) -> Optional[dict]:
        """The page's view of training job ``jid``, or None when there is none."""
        try:
            j = jobs.get(str(home), jid)
        except (jobs.JobNotFoundError, InvalidInputError):
            return None
        if j["kind"] != "train":
            return None
        state = j["state"]
        error = j["error"] or ("cancelled" if state == "cancelled" else None)
        return {"id": j["id"], "name": j["params"].get("detector"), "state": state,
                "stage": j["stage"] or state, "fraction": j["fraction"], "done": state in _FINISHED,
                "error": error if state != "succeeded" else None, "result": j["result"],
                "started": _epoch(j["started_at"]) or _epoch(j["created_at"]), "finished": _epoch(j["finished_at"])}

    def start(self, st: ServerState, name: str, audit: dict, **kwargs) -> str:
        """Queue the training of ``name`` (runs in the server's threads: it writes the
        database); the submission goes into the audit trail with ``audit``'s actor and origin."""
        params = {"detector": name, "dataset_id": kwargs["dataset_id"], "algorithm": kwargs["algorithm"],
                  "params": kwargs.get("params") or {}, "activate": bool(kwargs.get("activate", True))}
        try:
            jid = jobs.submit(str(st.home), "train", params, actor=audit["actor"])
        except Exception as e:
            st.audit.write(dict(audit, action="job.train", target=name, outcome=f"error: {e}"[:300]))
            raise
        st.audit.write(dict(audit, action="job.train", target=name, outcome="ok", detail={"job": jid}))
        return jid


    @staticmethod
    def check(algorithm: str, params: dict) -> None:
        """Refuse an unknown algorithm or parameters it does not take (before an upload is stored)."""
        jobs.check_algorithm(algorithm, params)


JOBS = Jobs()
