"""Background jobs (pynomaly.jobs): stored in the repository, claimed by exactly one worker,
re-queued when their worker dies, cancelled mid-training, re-queued on SIGTERM; and the CLI.

Workers run as real processes (``pynomaly worker``) wherever a test kills or signals one.
Tests taking ``home`` run on both backends (on PostgreSQL the claim is FOR UPDATE SKIP
LOCKED); the ones that kill or signal a worker mid-training stay on a folder home, where the
recovery logic they exercise is the same code and the cost is lower."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pynomaly.service import jobs
from pynomaly import service
from pynomaly._errors import InvalidInputError

from _daemon_helpers import wait_until
from _homes import raw_sql

PYNOMALY = [sys.executable, "-m", "pynomaly"]


@pytest.fixture
def small(tmp_path):
    X = np.random.default_rng(0).normal(size=(300, 4))
    path = tmp_path / "small.npy"
    np.save(path, X)
    return str(path)


@pytest.fixture
def big(tmp_path):
    """Data whose training takes seconds (long enough to kill or cancel it midway)."""
    X = np.random.default_rng(1).normal(size=(60_000, 10))
    path = tmp_path / "big.npy"
    np.save(path, X)
    return str(path)


# Training that outlasts a few heartbeats (HEARTBEAT = 0.5 s: a cancel reaches the worker at the
# next one) with room to spare on a loaded machine: 6,000 trees took 1.1 s, and a cancel once
# arrived after training had ended (the job then rightly succeeded). About 3 s here.
SLOW = {"n_estimators": 30000, "max_samples": 128, "random_state": 0}


def start_worker(home, *extra, log=None):
    p = subprocess.Popen([*PYNOMALY, "--home", str(home), "worker", "--poll", "0.05", *extra],
                         stdout=subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
    return p


def stop(p, sig=signal.SIGTERM, timeout=60):
    if p.poll() is None:
        p.send_signal(sig)
    try:
        return p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def training_started(home, job_id):
    j = jobs.get(home, job_id)
    return j["state"] == "running" and j["stage"] == "training" and (j["fraction"] or 0) > 0


# -- the API ---------------------------------------------------------------------------------------
def test_submit_run_and_read_back(home, tmp_path, small):
    job_id = jobs.submit(home, "train", {"detector": "d", "data": small, "params": {"n_estimators": 20}})
    j = jobs.get(home, job_id)
    assert j["state"] == "queued" and j["attempts"] == 0 and j["params"]["algorithm"] == "IsolationForest"
    assert jobs.get(home, job_id[:6])["id"] == job_id  # a unique prefix finds it
    assert jobs.Worker(home, poll=0.01).run(max_jobs=1) == 1
    j = jobs.get(home, job_id)
    assert j["state"] == "succeeded" and j["fraction"] == 1.0 and j["attempts"] == 1
    assert j["result"] == {"detector": "d", "version": 1, "status": "active"}
    assert [x["id"] for x in jobs.list_jobs(home, "succeeded")] == [job_id]
    assert jobs.counts(home) == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0}
    # A detect job re-scores a stored dataset file and stores the result.
    det_id = jobs.submit(home, "detect", {"detector": "d", "data": small})
    jobs.Worker(home, poll=0.01).run(max_jobs=1)
    j = jobs.get(home, det_id)
    assert j["state"] == "succeeded" and j["result"]["total_samples"] == 300
    assert len(service.show(home, "d")["results"]) == 1


@pytest.mark.parametrize("kind, params, message", [
    ("nope", {}, "unknown job kind"),
    ("train", {"detector": "bad name", "data": "x"}, "not a detector name"),
    ("train", {"detector": "d", "data": "/nonexistent.csv"}, "does not exist"),
    ("train", {"detector": "d", "data": None}, "needs 'data'"),
    ("train", {"detector": "d", "data": "SMALL", "algorithm": "Nope"}, "unknown algorithm"),
    ("train", {"detector": "d", "data": "SMALL", "colour": 1}, "unknown train job parameter"),
    ("train", {"detector": "d", "data": "SMALL", "params": [1]}, "'params' must be a mapping"),
    ("train", {"detector": "d", "data": "SMALL", "params": {"n_trees": 5}}, r"has no parameter\(s\) \['n_trees'\]"),
    ("train", {"detector": "d", "data": "SMALL", "submitted_by": "root"}, "unknown train job parameter"),
    ("detect", {"detector": "d", "data": "SMALL", "columns": "a"}, "'columns' must be a list"),
    ("detect", {"detector": "d", "data": "SMALL", "algorithm": "KNN"}, r"unknown detect job parameter\(s\) \['algorithm'\]"),
])
def test_bad_jobs_are_refused_when_submitted(tmp_path, small, kind, params, message):
    params = {k: (small if v == "SMALL" else v) for k, v in params.items()}
    with pytest.raises(ValueError, match=message):  # InvalidInputError, or InvalidNameError for a name
        jobs.submit(tmp_path / "home", kind, params)
    assert jobs.list_jobs(tmp_path / "home") == []


def test_a_training_jobs_version_is_audited_in_its_submitters_name(home, small):
    ok = jobs.submit(home, "train", {"detector": "d", "data": small, "params": {"n_estimators": 20}},
                     actor="token:alice")
    bad = jobs.submit(home, "train", {"detector": "d", "data": small, "params": {"max_samples": -3}},
                      actor="token:bob")
    assert jobs.Worker(home, poll=0.01).run(max_jobs=2) == 2
    trained = [e for e in service.audit_entries(home) if e["action"] == "train"]
    assert [(e["actor"], e["target"], e["origin"], e["outcome"][:6]) for e in trained] == [
        ("token:alice", "d@1", f"job {ok}", "ok"),
        ("token:bob", "d", f"job {bad}", "error:"),
    ]
    assert "max_samples" in trained[1]["outcome"] and trained[0]["detail"]["algorithm"] == "IsolationForest"
    # Submitted without an actor: in the name of this process's user, as the CLI's entries are.
    from pynomaly.store.audit import default_actor

    job = jobs.submit(home, "train", {"detector": "d", "data": small, "params": {"n_estimators": 20}})
    jobs.Worker(home, poll=0.01).run(max_jobs=1)
    last = service.audit_entries(home)[-1]
    assert (last["actor"], last["target"], last["origin"]) == (default_actor(), "d@2", f"job {job}")


def test_unknown_job_and_bad_state(tmp_path):
    with pytest.raises(jobs.JobNotFoundError):
        jobs.get(tmp_path, "0123456789")
    with pytest.raises(InvalidInputError, match="unknown job state"):
        jobs.list_jobs(tmp_path, "done")


def test_the_jobs_table_is_a_numbered_migration(home, small):
    """Migration 8 (issue 21): opening a home makes the jobs' table, as every other table; a
    home whose table was made on first use before (at migration 7) migrates and keeps its jobs."""
    from _homes import is_pg

    from pynomaly.store.repository import Repository

    Repository(home).close()
    assert raw_sql(home, "SELECT COUNT(*) FROM jobs")[0][0] == 0  # there before any job is submitted
    job_id = jobs.submit(home, "train", {"detector": "d", "data": small})
    raw_sql(home, "DELETE FROM schema_migrations WHERE version > 7")
    if not is_pg(home):
        raw_sql(home, "PRAGMA user_version = 7")
    assert [j["id"] for j in jobs.list_jobs(home)] == [job_id]
    assert raw_sql(home, "SELECT description FROM schema_migrations WHERE version = 8") \
        == [("jobs' tables (made on first use before)",)]


def test_a_failed_job_keeps_its_error_and_its_detector_is_failed(home, tmp_path, small):
    job_id = jobs.submit(home, "train", {"detector": "d", "data": small, "params": {"max_samples": -3}})
    jobs.Worker(home, poll=0.01).run(max_jobs=1)
    j = jobs.get(home, job_id)
    assert j["state"] == "failed" and "max_samples" in j["error"]
    # Refused before any work: a first training refused by its parameters stores nothing.
    job_id = jobs.submit(home, "detect", {"detector": "ghost", "data": small})
    jobs.Worker(home, poll=0.01).run(max_jobs=1)
    assert "ghost" in jobs.get(home, job_id)["error"]


def test_cancel_a_queued_job_and_refuse_cancelling_a_finished_one(home, tmp_path, small):
    job_id = jobs.submit(home, "train", {"detector": "d", "data": small})
    assert jobs.cancel(home, job_id)["state"] == "cancelled"
    assert jobs.Worker(home, poll=0.01).run(max_jobs=0) == 0
    jobs.Worker(home, poll=0.01)
    with pytest.raises(InvalidInputError, match="already cancelled"):
        jobs.cancel(home, job_id)
    assert not service.list_detectors(home)


def test_watch_follows_a_job_to_its_end(home, tmp_path, small):
    job_id = jobs.submit(home, "train", {"detector": "d", "data": small})
    seen = []
    import threading

    t = threading.Thread(target=lambda: seen.extend(jobs.watch(home, job_id, interval=0.01)))
    t.start()
    time.sleep(0.1)
    jobs.Worker(home, poll=0.01).run(max_jobs=1)
    t.join(30)
    assert seen[0]["state"] == "queued" and seen[-1]["state"] == "succeeded"


# -- several workers, one home -----------------------------------------------------------------
def test_many_jobs_from_several_processes_each_run_exactly_once(home, tmp_path, small):
    n = 24
    # Submitted from three processes at once.
    code = ("import sys; from pynomaly import jobs\n"
            "for i in range(int(sys.argv[2]), int(sys.argv[3])):\n"
            "    jobs.submit(sys.argv[1], 'train', {'detector': f'd{i}', 'data': sys.argv[4], 'params': {'n_estimators': 10}})\n")
    subs = [subprocess.Popen([sys.executable, "-c", code, str(home), str(a), str(a + 8), small]) for a in (0, 8, 16)]
    workers = [start_worker(home) for _ in range(3)]
    try:
        assert all(p.wait(120) == 0 for p in subs)
        assert wait_until(lambda: jobs.counts(home)["succeeded"] == n, timeout=120)
    finally:
        for w in workers:
            assert stop(w) == 0
    js = jobs.list_jobs(home)
    assert len(js) == n and all(j["attempts"] == 1 for j in js)
    # Exactly once: each detector has exactly one version (a second run would add a second).
    for i in range(n):
        assert [v["version"] for v in service.show(home, f"d{i}")["versions"]] == [1]
    assert len({j["worker"] for j in js}) >= 2  # the work was shared


def test_restart_with_queued_jobs(home, tmp_path, small):
    ids = [jobs.submit(home, "train", {"detector": f"d{i}", "data": small, "params": {"n_estimators": 10}})
           for i in range(3)]
    # No worker yet: they wait in the repository, across processes.
    assert [jobs.get(home, i)["state"] for i in ids] == ["queued"] * 3
    out = subprocess.run([*PYNOMALY, "--home", str(home), "worker", "--max-jobs", "3", "--poll", "0.05"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [jobs.get(home, i)["state"] for i in ids] == ["succeeded"] * 3


def test_kill_9_mid_job_requeues_it_and_another_worker_finishes_it(tmp_path, big):
    home = tmp_path / "home"
    job_id = jobs.submit(home, "train", {"detector": "slow", "data": big, "params": SLOW})
    w = start_worker(home)
    try:
        assert wait_until(lambda: training_started(home, job_id), timeout=120)
    finally:
        stop(w, signal.SIGKILL)
    assert jobs.get(home, job_id)["state"] == "running"  # what the dead worker left
    assert not service.list_detectors(home)  # nothing half-stored
    w2 = start_worker(home)
    try:
        assert wait_until(lambda: jobs.get(home, job_id)["state"] == "succeeded", timeout=300)
    finally:
        assert stop(w2) == 0
    j = jobs.get(home, job_id)
    assert j["attempts"] == 2 and "stopped during attempt 1" in j["notes"][0] and j["error"] is None
    assert [v["version"] for v in service.show(home, "slow")["versions"]] == [1]


def test_a_job_whose_workers_keep_dying_fails_and_its_detector_is_failed(home, tmp_path, small):
    job_id = jobs.submit(home, "train", {"detector": "d", "data": small}, max_attempts=2)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = f"{os.uname().nodename}:{int(dead.stdout)}:x"
    raw_sql(home, "UPDATE jobs SET state='running', worker=?, heartbeat=?, attempts=2 WHERE id=?",
            (gone, time.time(), job_id))
    assert jobs.recover(home) == [job_id]
    j = jobs.get(home, job_id)
    assert j["state"] == "failed" and j["error"].startswith("interrupted")
    d = service.list_detectors(home)[0]
    assert d.status.value == "failed" and "interrupted" in d.error


def test_a_stale_heartbeat_is_taken_back(home, tmp_path, small):
    job_id = jobs.submit(home, "train", {"detector": "d", "data": small})
    # a worker on another host that stopped beating a minute ago
    raw_sql(home, "UPDATE jobs SET state='running', worker='elsewhere:1:x', heartbeat=?, attempts=1 WHERE id=?",
            (time.time() - 60, job_id))
    assert jobs.recover(home, lease=30) == [job_id]
    assert jobs.get(home, job_id)["state"] == "queued"
    jobs.Worker(home, poll=0.01).run(max_jobs=1)
    assert jobs.get(home, job_id)["state"] == "succeeded"


# -- cancel and shutdown stop the native work -------------------------------------------------------
def test_cancel_mid_training_stops_it(tmp_path, big):
    home = tmp_path / "home"
    job_id = jobs.submit(home, "train", {"detector": "slow", "data": big, "params": SLOW})
    w = start_worker(home)
    try:
        assert wait_until(lambda: training_started(home, job_id), timeout=120)
        assert jobs.cancel(home, job_id)["cancel_requested"]
        assert wait_until(lambda: jobs.get(home, job_id)["state"] == "cancelled", timeout=30)
        j = jobs.get(home, job_id)
        assert (j["fraction"] or 0) < 1.0
        assert w.poll() is None  # the worker goes on to the next job
        nxt = jobs.submit(home, "train", {"detector": "next", "data": big, "params": {"n_estimators": 5}})
        assert wait_until(lambda: jobs.get(home, nxt)["state"] == "succeeded", timeout=120)
    finally:
        assert stop(w) == 0
    assert not any(v for v in service.show(home, "slow")["versions"])  # no version stored


def test_cancel_stops_a_kernel_that_reports_no_progress(tmp_path):
    """LOF's fit reports no fraction: the worker's signal interrupts it (its kernels poll)."""
    X = np.random.default_rng(2).normal(size=(40_000, 20))
    np.save(tmp_path / "lof.npy", X)
    home = tmp_path / "home"
    job_id = jobs.submit(home, "train", {"detector": "lof", "data": str(tmp_path / "lof.npy"), "algorithm": "LOF",
                                         "params": {"n_neighbors": 200}})
    w = start_worker(home)
    try:
        assert wait_until(lambda: jobs.get(home, job_id)["stage"] == "training", timeout=120)
        time.sleep(0.3)
        jobs.cancel(home, job_id)
        assert wait_until(lambda: jobs.get(home, job_id)["state"] in ("cancelled", "succeeded"), timeout=60)
        assert jobs.get(home, job_id)["state"] == "cancelled"
    finally:
        assert stop(w) == 0


def test_sigterm_requeues_the_running_job(tmp_path, big):
    home = tmp_path / "home"
    job_id = jobs.submit(home, "train", {"detector": "slow", "data": big, "params": SLOW})
    w = start_worker(home)
    try:
        assert wait_until(lambda: training_started(home, job_id), timeout=120)
    finally:
        assert stop(w, signal.SIGTERM, timeout=30) == 0
    j = jobs.get(home, job_id)
    assert j["state"] == "queued" and j["attempts"] == 0 and "shut down" in j["notes"][0]


# -- the CLI ----------------------------------------------------------------------------------------
def cli(home, *args, check=True):
    out = subprocess.run([*PYNOMALY, "--home", str(home), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_cli_background_training_and_jobs_commands(home, tmp_path, small):
    out = cli(home, "train", "--detector", "d", "--data", small, "--param", "n_estimators=10", "--background")
    job_id = out.stdout.split()[0]
    assert "queued" in out.stdout
    listed = json.loads(cli(home, "jobs", "list", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert job_id[:8] in cli(home, "jobs", "list").stdout
    cli(home, "worker", "--max-jobs", "1", "--poll", "0.05")
    shown = json.loads(cli(home, "jobs", "show", job_id[:8], "--json").stdout)
    assert shown["state"] == "succeeded"
    watched = cli(home, "jobs", "watch", job_id)
    assert "succeeded" in watched.stdout and '"version": 1' in watched.stdout
    bad = cli(home, "jobs", "cancel", job_id, check=False)
    assert bad.returncode == 1 and "already succeeded" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli(home, "train", "--detector", "d", "--data", str(tmp_path / "none.csv"), "--background", check=False)
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    bad = cli(home, "jobs", "show", "nope", check=False)
    assert bad.returncode == 1 and "no job" in bad.stderr


def test_cli_cancel_of_a_queued_job(home, tmp_path, small):
    job_id = jobs.submit(home, "train", {"detector": "d", "data": small})
    assert "cancelled" in cli(home, "jobs", "cancel", job_id).stdout
    out = cli(home, "jobs", "watch", job_id, check=False)
    assert out.returncode == 1 and "cancelled" in out.stdout


def test_daemon_job_workers_run_queued_jobs(tmp_path, small):
    from _daemon_helpers import DaemonProcess

    home = tmp_path / "home"
    job_id = jobs.submit(home, "train", {"detector": "d", "data": small, "params": {"n_estimators": 10}})
    d = DaemonProcess(tmp_path, None, "--home", str(home), "--job-workers", "1")
    try:
        assert wait_until(lambda: jobs.get(home, job_id)["state"] == "succeeded", timeout=60)
        import pynomaly

        with pynomaly.Client(d.sock) as c:
            assert c.detect("d", np.load(small)[:3]).scores.shape == (3,)
    finally:
        assert d.stop() == 0
    bad = subprocess.run([sys.executable, "-m", "pynomaly_daemon", "--socket", str(tmp_path / "x.sock"), "--models",
                          str(tmp_path), "--job-workers", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--job-workers needs a repository home" in bad.stderr
