"""Threads: n_jobs really runs that many threads in parallel, also after other libraries'
OpenMP runtimes (scikit-learn's, faiss's, torch's bundled libgomp copies) were loaded and
used first, and the native core releases the GIL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import pynomaly
from pynomaly.estimators._validation import usable_cpus

# Runs in a fresh interpreter: load and exercise the peers' OpenMP runtimes first, then score
# with n_jobs=2 on a background thread while sampling per-thread CPU time from /proc.
PROBE = textwrap.dedent(
    """
    import importlib, json, os, sys, threading, time
    import numpy as np
    loaded = []
    for mod in sys.argv[1:]:
        try:
            importlib.import_module(mod)
        except ImportError:
            continue
        loaded.append(mod)
        if mod == "sklearn":
            from sklearn.neighbors import NearestNeighbors
            from sklearn.ensemble import HistGradientBoostingClassifier
            Z = np.random.rand(3000, 8)
            NearestNeighbors().fit(Z).kneighbors(Z)
            HistGradientBoostingClassifier(max_iter=5).fit(Z, Z[:, 0] > 0.5)
        elif mod == "faiss":
            import faiss
            index = faiss.IndexFlatL2(16)
            index.add(np.random.rand(20000, 16).astype("float32"))
            index.search(np.random.rand(2000, 16).astype("float32"), 10)
        elif mod == "torch":
            import torch
            torch.randn(512, 512) @ torch.randn(512, 512)
    import pynomaly

    def sched_by_thread():
        # schedstat: nanoseconds on a CPU, nanoseconds runnable but waiting for one, slices
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                cpu, wait, _ = open(f"/proc/self/task/{tid}/schedstat").read().split()
            except (OSError, ValueError):
                continue
            out[tid] = (int(cpu) / 1e9, int(wait) / 1e9)
        return out

    def allowed_cpus(tid):
        for line in open(f"/proc/self/task/{tid}/status"):
            if line.startswith("Cpus_allowed_list:"):
                return sum(int(b) - int(a) + 1 for a, _, b in
                           (r.strip().partition("-") if "-" in r else (r, "", r) for r in line.split(":")[1].split(",")))
        return -1

    X = np.random.default_rng(0).standard_normal((5000, 16))
    model = pynomaly.IsolationForest(random_state=0, n_jobs=2).fit(X)
    big = np.broadcast_to(X[:1], (8_000_000, 16))
    before = sched_by_thread()
    t0 = time.perf_counter()
    model.decision_function(big)
    wall = time.perf_counter() - t0
    after = sched_by_thread()
    threads = sorted(
        ((a[0] - before.get(t, (0.0, 0.0))[0], a[1] - before.get(t, (0.0, 0.0))[1], allowed_cpus(t))
         for t, a in after.items()), reverse=True)
    threads += [(0.0, 0.0, 0)] * 3  # fewer than three threads: the missing ones did nothing
    print(json.dumps({"loaded": loaded, "wall": wall, "threads": threads[:3],
                      "total_cpu": sum(t[0] for t in threads)}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads per-thread CPU time from /proc")
@pytest.mark.skipif(usable_cpus() < 2, reason="needs at least 2 usable CPUs")
@pytest.mark.parametrize("first", [[], ["sklearn"], ["faiss", "sklearn"], ["torch", "sklearn", "faiss"]])
def test_two_threads_both_work_after_other_openmp_runtimes(first):
    """Two threads share the work and each wants a CPU for the whole call: a runtime that
    pinned them to one core, serialised them, or left its own threads spinning beside ours
    fails this. Time spent runnable but waiting (another process on the CPU) counts as wanting
    one, so a busy machine does not fail it."""
    for attempt in range(3):  # the third-busiest thread can be a stray moment of the interpreter
        out = subprocess.run([sys.executable, "-c", PROBE, *first], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout.strip().splitlines()[-1])
        (cpu0, wait0, cpus0), (cpu1, wait1, cpus1), (cpu2, _, _) = r["threads"]
        if cpu2 <= 0.2 * r["wall"]:
            break
    wall = r["wall"]
    assert cpus0 >= 2 and cpus1 >= 2, r  # not pinned to a single CPU
    assert min(cpu0, cpu1) >= 0.35 * r["total_cpu"], r  # the work is split between the two
    assert cpu0 + wait0 >= 0.8 * wall and cpu1 + wait1 >= 0.8 * wall, r  # neither waited on the other
    assert cpu2 <= 0.2 * wall, r  # no other thread spun beside them


def test_gil_is_released_during_native_work():
    """A Python thread keeps running while another thread scores a large array."""
    X = np.random.default_rng(0).standard_normal((2000, 8))
    model = pynomaly.IsolationForest(random_state=0).fit(X)
    big = np.broadcast_to(X[:1], (3_000_000, 8))
    ticks = 0
    done = threading.Event()

    def score():
        model.decision_function(big)
        done.set()

    t = threading.Thread(target=score)
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    assert ticks >= 20  # the scoring took well over 20 ms and the main thread kept running


def test_results_do_not_depend_on_n_jobs():
    X = np.random.default_rng(0).standard_normal((30000, 8))
    m = pynomaly.IsolationForest(random_state=0).fit(X)
    ref = m.set_params(n_jobs=1).decision_function(X)
    for n_jobs in (2, 3, -1, 8, 10**6):
        np.testing.assert_array_equal(m.set_params(n_jobs=n_jobs).decision_function(X), ref)
