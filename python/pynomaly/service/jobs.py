"""Background jobs: long work (training, re-scoring a dataset) submitted now, run by a worker.

Jobs live in the repository's database (table ``jobs``), so they survive restarts and any
number of workers may share one home: a worker claims the oldest queued job inside one
``BEGIN IMMEDIATE`` transaction (SQLite), or with ``SELECT ... FOR UPDATE SKIP LOCKED`` in a
transaction of its own (PostgreSQL: workers on several machines take different jobs at once
instead of queueing for one lock), so each job is claimed by exactly one worker.

States: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``.

A running job's worker writes a heartbeat (and the job's progress: stage and fraction) every
half second. A job whose worker died (its process is gone on this host, or its heartbeat is
older than the lease) is **re-queued** while it has attempts left (``max_attempts``, default
3), else failed with an "interrupted" error. Re-queueing is safe because the work is
idempotent until its end: training stores nothing before the fit is done and adds the version
in one transaction, so a killed attempt leaves nothing behind and the next one starts clean.
A job killed again and again (one that kills its worker, say by running out of memory) stops
after ``max_attempts`` instead of taking every worker down in turn.

Cancel: a queued job is cancelled at once; a running one is asked to stop, and its worker
interrupts the native work (the kernels poll for interrupts every 50 ms: through the progress
callback, and in a ``pynomaly worker`` process also through a signal, so kernels that report
no progress stop too). Work past its last stage ("saving") finishes; the job then succeeds.

The faces call: :func:`submit`, :func:`get`, :func:`list_jobs`, :func:`cancel`, :func:`watch`;
workers are :class:`Worker` (``pynomaly worker``, or threads in a server process).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

from pynomaly.store import jobs as _rows
from pynomaly.store._schema import migrated_home, open_database
from pynomaly._errors import InvalidInputError, NotFoundError, PynomalyError
from pynomaly.service import metrics
from pynomaly.service.home import audit_record
from pynomaly.service.training import record_failed_training, train
from pynomaly.service.usecases import detect

__all__ = [
    "STATES",
    "KINDS",
    "JobNotFoundError",
    "JobCancelled",
    "submit",
    "get",
    "list_jobs",
    "cancel",
    "watch",
    "recover",
    "counts",
    "Worker",
    "start_workers",
]

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")

_log = logging.getLogger("pynomaly.jobs")

HEARTBEAT = 0.5  # seconds between a running job's heartbeats (and progress writes)
LEASE = 30.0  # a running job without a heartbeat for this long has lost its worker


class JobNotFoundError(NotFoundError):
    """No job with that id (a LookupError, as every NotFoundError)."""


class JobCancelled(PynomalyError):
    """Raised inside a job's work when it was cancelled (or its worker is shutting down)."""


def _connect(home):
    return open_database(home)  # the table is the repository's migration 8 (pynomaly.store._schema)


# -- kinds: what a job may do, checked when submitted ----------------------------------------
def _abs_data(params: dict) -> None:
    data = params.get("data")
    if not isinstance(data, str) or not data:
        raise InvalidInputError("the job needs 'data': the path of a data file")
    p = Path(data).expanduser()
    if not p.is_file():
        raise InvalidInputError(f"data file {data!r} does not exist")
    params["data"] = str(p.resolve())  # the worker runs elsewhere


def _data_or_dataset(params: dict) -> None:
    """A job reads a data file (``data``: a path on the worker's machine; the CLI's) or a
    stored dataset (``dataset_id``; what the HTTP API accepts, which never takes a path)."""
    if "dataset_id" in params:
        if "data" in params:
            raise InvalidInputError("give either 'data' (a file) or 'dataset_id' (a stored dataset), not both")
        if not isinstance(params["dataset_id"], str) or not params["dataset_id"]:
            raise InvalidInputError("'dataset_id' must be the id of a stored dataset")
        return
    _abs_data(params)


def _check_columns(params: dict) -> None:
    cols = params.get("columns")
    if cols is not None and (not isinstance(cols, list) or not all(isinstance(c, (str, int)) for c in cols)):
        raise InvalidInputError("'columns' must be a list of column names or indices")


def _only(params: dict, kind: str, allowed: set) -> None:
    unknown = set(params) - allowed
    if unknown:
        raise InvalidInputError(f"unknown {kind} job parameter(s) {sorted(unknown)}; accepted: {sorted(allowed)}")


def _check_train(params: dict) -> dict:
    from pynomaly.domain import check_name

    _only(params, "train", {"detector", "data", "dataset_id", "algorithm", "params", "columns", "activate"})
    check_name(params.get("detector"))
    _data_or_dataset(params)
    check_algorithm(params.setdefault("algorithm", "IsolationForest"), params.setdefault("params", {}))
    _check_columns(params)
    return params


def check_algorithm(algorithm, params) -> None:
    """Refuse an unknown algorithm, or parameters it does not take, before any data is read or
    stored (a form that uploads its data stores it only once this passes). InvalidInputError."""
    from pynomaly.estimators import registry

    if not isinstance(algorithm, str) or not registry.is_known(algorithm):
        raise InvalidInputError(f"unknown algorithm {algorithm!r}; known: {', '.join(registry.names())}")
    if not isinstance(params, dict):
        raise InvalidInputError("'params' must be a mapping of algorithm parameters")
    registry.create(algorithm, **{**registry.stored_defaults(algorithm), **params})


def _check_detect(params: dict) -> dict:
    from pynomaly.domain import check_name

    _only(params, "detect", {"detector", "data", "dataset_id", "version", "threshold", "contamination", "columns"})
    check_name(params.get("detector"))
    _data_or_dataset(params)
    _check_columns(params)
    return params


def _run_train(home, params: dict, progress) -> dict:
    det = train(home, params["detector"], params.get("data"), params.get("algorithm", "IsolationForest"),
                params.get("params") or {}, columns=params.get("columns"),
                activate=params.get("activate", True), progress=progress,
                dataset_id=params.get("dataset_id"))
    return {"detector": det.name, "version": det.version, "status": det.status.value}


def _run_detect(home, params: dict, progress) -> dict:
    result = detect(home, params["detector"], params.get("data"), version=params.get("version"),
                    threshold=params.get("threshold"), contamination=params.get("contamination"),
                    columns=params.get("columns"), progress=progress, dataset_id=params.get("dataset_id"))
    return result.summary()


# name -> (check(params) -> params, run(home, params, progress) -> JSON-able result)
KINDS: dict = {
    "train": (_check_train, _run_train),
    "detect": (_check_detect, _run_detect),
}


# -- the API the faces call ------------------------------------------------------------------
def submit(home, kind: str, params: dict, *, max_attempts: int = 3, actor: Optional[str] = None) -> str:
    """Queue a job; returns its id at once. ``kind`` is one of :data:`KINDS` (``"train"``:
    detector, data, algorithm, params, columns, activate; ``"detect"``: detector, data,
    version, threshold, contamination, columns). Parameters are checked now (names, data file,
    algorithm), so a bad job is refused here rather than failing in a worker. ``actor``: who
    submits it (as the audit trail names them; default this process's user): the version a
    training job stores is audited in their name (``params["submitted_by"]``)."""
    if kind not in KINDS:
        raise InvalidInputError(f"unknown job kind {kind!r}; accepted: {', '.join(KINDS)}")
    if not isinstance(params, dict):
        raise InvalidInputError("job parameters must be a mapping")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidInputError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
    params = KINDS[kind][0](dict(params))
    if actor is None:
        from pynomaly.store.audit import default_actor

        actor = default_actor()
    params["submitted_by"] = str(actor)  # after the check: never a caller's parameter
    try:
        text = json.dumps(params)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"job parameters must be JSON values: {e}") from None
    job_id = uuid.uuid4().hex
    db = _connect(home)
    try:
        _rows.insert(db, job_id, kind, text, max_attempts)
    finally:
        db.close()
    return job_id


def _iso(t) -> Optional[str]:
    if t is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat()


def _to_dict(r) -> dict:
    return {
        "id": r["id"],
        "kind": r["kind"],
        "params": json.loads(r["params"]),
        "state": r["state"],
        "stage": r["stage"],
        "fraction": r["fraction"],
        "created_at": _iso(r["created_at"]),
        "started_at": _iso(r["started_at"]),
        "finished_at": _iso(r["finished_at"]),
        "worker": r["worker"],
        "attempts": r["attempts"],
        "max_attempts": r["max_attempts"],
        "cancel_requested": bool(r["cancel_requested"]),
        "error": r["error"],
        "notes": r["notes"].splitlines() if r["notes"] else [],
        "result": json.loads(r["result"]) if r["result"] else None,
    }


def _find(db, job_id: str):
    if not isinstance(job_id, str) or not job_id:
        raise JobNotFoundError(f"no job {job_id!r}")
    r = _rows.by_id(db, job_id)
    if r is None:
        # A unique prefix (as `pynomaly jobs list` shows them) is accepted too.
        rows = _rows.by_prefix(db, job_id)
        if len(rows) != 1 or len(job_id) < 4:
            raise JobNotFoundError(f"no job {job_id!r}" + (" (the prefix is ambiguous)" if len(rows) > 1 else ""))
        r = rows[0]
    return r


def get(home, job_id: str) -> dict:
    """A job as a JSON-able dict: id, kind, params, state, stage, fraction, times (ISO 8601),
    worker, attempts, cancel_requested, error (why it failed), notes (re-queues, each a line),
    result. JobNotFoundError if there is none."""
    db = _connect(home)
    try:
        return _to_dict(_find(db, job_id))
    finally:
        db.close()


def list_jobs(home, state: Optional[str] = None, limit: int = 100) -> list:
    """The latest ``limit`` jobs (newest first), optionally only those in ``state``."""
    if state is not None and state not in STATES:
        raise InvalidInputError(f"unknown job state {state!r}; accepted: {', '.join(STATES)}")
    db = _connect(home)
    try:
        return [_to_dict(r) for r in _rows.latest(db, state, limit)]
    finally:
        db.close()


def counts(home) -> dict:
    """Number of jobs in each state (every state named, 0 when none): the ``pynomaly_jobs`` gauge."""
    db = _connect(home)
    try:
        return {**dict.fromkeys(STATES, 0), **_rows.count_by_state(db)}
    finally:
        db.close()


metrics.count_jobs_with(counts)  # the pynomaly_jobs gauge of every face's metrics


def cancel(home, job_id: str) -> dict:
    """Cancel a job: a queued one now, a running one as soon as its worker sees the request
    (within a second). Cancelling a finished job is refused with its state."""
    db = _connect(home)
    try:
        with db.transaction():
            r = _find(db, job_id)
            if r["state"] in TERMINAL:
                raise InvalidInputError(f"job {r['id']} is already {r['state']}")
            if r["state"] == "queued":
                _rows.cancel_queued(db, r["id"])
            else:
                _rows.request_cancel(db, r["id"])
        return _to_dict(_find(db, r["id"]))
    finally:
        db.close()


def watch(home, job_id: str, interval: float = 0.25, timeout: Optional[float] = None) -> Iterator[dict]:
    """Yield the job each time its state, stage or progress changes, until it is finished (the
    last dict yielded is the finished job) or ``timeout`` seconds pass."""
    db = _connect(home)
    try:
        job_id = _find(db, job_id)["id"]
        last = None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            d = _to_dict(_find(db, job_id))
            now = (d["state"], d["stage"], d["fraction"], d["attempts"], d["cancel_requested"])
            if now != last:
                last = now
                yield d
            if d["state"] in TERMINAL or (deadline is not None and time.monotonic() > deadline):
                return
            time.sleep(interval)
    finally:
        db.close()


# -- workers ---------------------------------------------------------------------------------
def _alive(worker: Optional[str]) -> Optional[bool]:
    """Whether a worker ("host:pid:token") is alive: None when it runs on another host."""
    try:
        host, pid, _ = (worker or "").rsplit(":", 2)
        pid = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(home, lease: float = LEASE) -> list:
    """Re-queue (or fail, when out of attempts) the running jobs whose worker is gone: its
    process has exited (same host) or its heartbeat is older than ``lease`` seconds. Every
    worker calls this as it looks for work; returns the ids handled."""
    db = home if hasattr(home, "execute") else _connect(home)
    try:
        now = time.time()
        done, gave_up = [], []
        stale = [r["id"] for r in _rows.running(db)
                 if _alive(r["worker"]) is False or (r["heartbeat"] or 0) < now - lease]
        for job_id in stale:
            with db.transaction():
                r = _rows.running_by_id(db, job_id)
                if r is None:
                    continue
                if _alive(r["worker"]) is not False and (r["heartbeat"] or 0) >= time.time() - lease:
                    continue  # it came back to life (a heartbeat) since the first look
                why = f"worker {r['worker']} stopped during attempt {r['attempts']}"
                if r["cancel_requested"]:
                    _rows.end_stale(db, job_id, "cancelled", now, why)
                elif r["attempts"] < r["max_attempts"]:
                    _rows.requeue_stale(db, job_id, why + "; re-queued")
                else:
                    _rows.end_stale(db, job_id, "failed", now, f"interrupted: {why}, the last of {r['max_attempts']}")
                    gave_up.append((r, f"interrupted: {why}"))
            done.append(job_id)
        for r, why in gave_up:  # after the commit: the service writes with its own connection
            _detector_failed(db, r, why)
        return done
    finally:
        if db is not home:
            db.close()


def _detector_failed(db, row, reason: str) -> None:
    """A train job that gave up: its detector becomes FAILED if this was its first training
    (per the domain lifecycle; a failed retraining leaves the detector as it was)."""
    if row["kind"] != "train":
        return
    params = json.loads(row["params"])
    home = db.home
    try:
        record_failed_training(home, params["detector"], params.get("algorithm", "IsolationForest"),
                               params.get("params") or {}, reason)
    except Exception:  # noqa: BLE001 - the job's own error says what happened
        pass


class _Running:
    """The job a worker is running: where its progress callback and heartbeat meet."""

    def __init__(self, job_id: str):
        self.id = job_id
        self.stage: Optional[str] = None
        self.fraction: Optional[float] = None
        self.cancel = threading.Event()
        self.shutdown = False
        self.interruptible = False  # inside the work's stoppable part (training, scoring)

    def progress(self, stage: str, fraction=None) -> None:
        self.stage, self.fraction = stage, fraction
        self.interruptible = stage in ("loading data", "training", "scoring", "loading detector")
        if self.cancel.is_set() and self.interruptible:
            raise JobCancelled("shutting down" if self.shutdown else "cancelled")


class Worker:
    """Runs queued jobs of one home, one at a time, until told to stop.

    Parameters
    ----------
    home : folder, None or Repository
    poll : float
        Seconds between looks for work when the queue is empty.
    lease : float
        A running job with no heartbeat for this long is taken back (see :func:`recover`).
    signals : bool
        Interrupt native work with SIGUSR1 as well as through the progress callback (only in
        the main thread of a process that runs nothing else: ``pynomaly worker``).
    """

    def __init__(self, home=None, *, poll: float = 0.5, lease: float = LEASE, signals: bool = False):
        self.home = migrated_home(home)
        self.poll = poll
        self.lease = lease
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop = threading.Event()
        self.current: Optional[_Running] = None
        self.signals = signals and threading.current_thread() is threading.main_thread()
        self.jobs_run = 0

    # -- claiming ---------------------------------------------------------------------------
    def claim(self, db):
        """Take the oldest queued job: exactly one worker gets each (one write transaction)."""
        if not _rows.any_queued(db):
            return None  # an idle worker only reads: no write lock every poll
        return _rows.claim(db, self.id)

    def run(self, max_jobs: Optional[int] = None) -> int:
        """Run jobs until :attr:`stop` is set (or ``max_jobs`` were run); returns how many ran."""
        old = None
        if self.signals:
            old = signal.signal(signal.SIGUSR1, self._on_interrupt)
        db = _connect(self.home)
        try:
            while not self.stop.is_set() and (max_jobs is None or self.jobs_run < max_jobs):
                recover(db, self.lease)
                row = self.claim(db)
                if row is None:
                    self.stop.wait(self.poll)
                    continue
                self._run(db, row)
                self.jobs_run += 1
        finally:
            db.close()
            if self.signals:
                signal.signal(signal.SIGUSR1, old)
        return self.jobs_run

    def shutdown(self) -> None:
        """Stop taking jobs; the running one is interrupted and re-queued (SIGTERM does this)."""
        self.stop.set()
        cur = self.current
        if cur is not None:
            cur.shutdown = True
            self._interrupt(cur)

    # -- one job ----------------------------------------------------------------------------
    def _interrupt(self, cur: _Running) -> None:
        cur.cancel.set()
        if self.signals and cur.interruptible:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def _on_interrupt(self, signum, frame):
        cur = self.current
        if cur is not None and cur.cancel.is_set() and cur.interruptible:
            raise JobCancelled("shutting down" if cur.shutdown else "cancelled")

    def _heartbeat(self, cur: _Running, done: threading.Event) -> None:
        db = _connect(self.home)
        try:
            while not done.wait(HEARTBEAT):
                r = _rows.heartbeat(db, cur.id, self.id, cur.stage, cur.fraction)
                if r is None:  # taken back (our heartbeat was late): stop doing its work
                    self._interrupt(cur)
                elif r[0] and not cur.cancel.is_set():
                    self._interrupt(cur)
        except Exception:  # noqa: BLE001 - a lost heartbeat only means recover() may take the job back
            pass
        finally:
            db.close()

    def _run(self, db, row) -> None:
        cur = self.current = _Running(row["id"])
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(cur, done), daemon=True, name="pynomaly-job-heartbeat")
        beat.start()
        _, run = KINDS[row["kind"]]
        state, error, result = "succeeded", None, None
        t0 = time.perf_counter()
        try:
            if row["cancel_requested"]:
                raise JobCancelled("cancelled")
            result = run(self.home, json.loads(row["params"]), cur.progress)
        except JobCancelled:
            state = "queued" if cur.shutdown and not row["cancel_requested"] and not _rows.cancel_requested(db, cur.id) else "cancelled"
        except KeyboardInterrupt:
            state, error = "cancelled", "interrupted"
        except BaseException as e:  # noqa: BLE001 - the job's error, kept with it
            state, error = "failed", f"{type(e).__name__}: {e}"
            if not isinstance(e, Exception):
                raise
        finally:
            cur.interruptible = False
            done.set()
            beat.join()
            self.current = None
            self._finish(db, cur.id, state, error, result)
            metrics.JOB_SECONDS.observe(time.perf_counter() - t0, kind=row["kind"], state=state)
            if row["kind"] == "train" and state in ("succeeded", "failed"):
                self._audit_train(row, state, error, result)

    def _audit_train(self, row, state: str, error, result) -> None:
        """The version a training job stored (or its failure) in the audit trail, in the name
        of whoever submitted the job: the submission alone does not say what was trained."""
        params = json.loads(row["params"])
        name = params.get("detector", "")
        try:
            audit_record(
                self.home, actor=params.get("submitted_by"), action="train",
                target=f"{name}@{result['version']}" if state == "succeeded" else name,
                origin=f"job {row['id']}", outcome="ok" if state == "succeeded" else f"error: {error}"[:300],
                detail={"algorithm": params.get("algorithm"), "dataset_id": params.get("dataset_id")})
        except Exception as e:  # noqa: BLE001 - the version is stored; a trail that cannot be written is logged
            _log.warning("audit trail: cannot record job %s's training of %s: %s", row["id"], name, e)

    def _finish(self, db, job_id: str, state: str, error, result) -> None:
        now = time.time()
        with db.transaction():
            if state == "queued":  # shut down mid-job: back in the queue, this attempt not counted
                _rows.requeue_own(db, job_id, self.id, f"worker {self.id} shut down; re-queued")
            else:
                _rows.finish(db, job_id, self.id, state, now, error, json.dumps(result) if result is not None else None,
                             "done" if state == "succeeded" else None, 1.0 if state == "succeeded" else None)


def start_workers(home=None, threads: int = 1) -> list:
    """Start ``threads`` workers in threads of this process (a server's in-process workers);
    returns the :class:`Worker` objects (call ``shutdown()`` on each to stop them)."""
    workers = [Worker(home) for _ in range(threads)]
    for w in workers:
        threading.Thread(target=w.run, daemon=True, name="pynomaly-job-worker").start()
    return workers
