"""Shared fixtures: the real datasets in ../shared/datasets (skipped with a reason if absent);
``home``, one repository home per backend (a folder, and a PostgreSQL database on a server the
tests start themselves, see _pg.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import pynomaly

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("PYNOMALY_DATASETS", REPO.parent / "shared" / "datasets"))

# Every dataset present; SMALL_DATASETS leaves out the four largest for tests that must stay quick.
ALL_DATASETS = sorted(p.stem for p in DATASETS.glob("*.npz")) if DATASETS.is_dir() else []
SMALL_DATASETS = [n for n in ALL_DATASETS if n not in ("http", "smtp", "aloi", "shuttle")]


def dataset_params(names):
    """``names`` for ``pytest.mark.parametrize``; without datasets, one parameter that shows
    as a skip with the reason (an empty list would only say "got empty parameter set")."""
    if names:
        return list(names)
    return [pytest.param(None, marks=pytest.mark.skip(
        reason=f"no datasets under {DATASETS} (set PYNOMALY_DATASETS)"), id="no-datasets")]

SIMD_TARGETS = pynomaly.build_info()["simd_supported"]

# The tests' webhook receivers listen on loopback, which pynomaly refuses as a webhook target
# unless allowed (issue 25): allowed here for the whole run, and for the servers it starts.
# tests/service/test_alerts.py checks the refusal with the variable removed.
os.environ["PYNOMALY_WEBHOOK_ALLOW"] = "127.0.0.0/8"


@pytest.fixture(autouse=True)
def _close_raw_sockets():
    """Raw sockets opened by the daemon tests (_daemon_helpers.raw_connect) close after each test."""
    yield
    import _daemon_helpers

    _daemon_helpers.close_raw_sockets()


@pytest.fixture
def ctrl_c():
    """Ctrl-C as an interactive run has it: a process started in the background (nohup, `&`
    in a script) inherits SIGINT ignored, and then _thread.interrupt_main does nothing."""
    import signal

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def dataset_path(name: str) -> Path:
    path = DATASETS / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"dataset {name} not found under {DATASETS} (set PYNOMALY_DATASETS)")
    return path


def load_dataset(name: str):
    with np.load(dataset_path(name)) as d:
        return d["X"], d["y"].astype(np.int64)


def drift_halves(seed: int = 0, feature: int = 3, by: float = 1.0):
    """cardio shuffled (its file lists the anomalies last) and halved, for drift tests: the half to
    train on, the half to serve, and that half with ``feature`` moved by ``by`` (about one
    standard deviation for most of cardio's features)."""
    X, _ = load_dataset("cardio")
    X = X[np.random.default_rng(seed).permutation(len(X))]
    n = len(X) // 2
    moved = X[n:].copy()
    moved[:, feature] += by
    return X[:n], X[n:], moved


def blobs(n=2000, d=8, seed=0):
    """Gaussian rows with a few clear outliers (the first n // 50, shifted by 6)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[: n // 50] += 6.0
    return X


def roc_auc(y, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores))


def needs_datasets():
    if not ALL_DATASETS:
        pytest.skip(f"no datasets under {DATASETS} (set PYNOMALY_DATASETS)")


@pytest.fixture
def simd_target(request):
    """Run a test under one SIMD target and restore the best one afterwards."""
    pynomaly._core.set_simd(request.param)
    yield request.param
    pynomaly._core.set_simd(pynomaly.build_info()["simd_best"])


# -- homes on both backends ----------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server started for this test session (skipped, with the reason, where it
    cannot be: no psycopg, no initdb/pg_ctl)."""
    import _pg

    server, why = _pg.server()
    if server is None:
        pytest.skip(why)
    yield server
    server.close()


@pytest.fixture
def pg_home(pg_server, tmp_path, monkeypatch):
    """A fresh PostgreSQL database as a home; its installation-local files (the signing key)
    in the test's own folder, as replicas would share them through PYNOMALY_CONFIG_DIR."""
    monkeypatch.setenv("PYNOMALY_CONFIG_DIR", str(tmp_path / "config"))
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request, tmp_path):
    """The home of a test that must hold on both backends: the folder ``tmp_path`` itself (as
    the SQLite-only tests use it), or a URL from :func:`pg_home`."""
    if request.param == "sqlite":
        return tmp_path
    return request.getfixturevalue("pg_home")


# -- what a run skipped, grouped by what it lacked (issue 26) ------------------------------------
_LACKS = (  # (words in a skip reason, what the skipped tests need), the first match wins
    (("PYNOMALY_DATASETS",), f"need the ADBench datasets in {DATASETS} (set PYNOMALY_DATASETS)"),
    (("postgres", "initdb", "pg_ctl", "psycopg"), "need PostgreSQL (initdb, pg_ctl; pynomaly[postgres])"),
    (("chromium", "chromedriver", "selenium"), "need Chromium and chromedriver"),
    (("qemu",), "need qemu-aarch64"),
    (("sanitizer", "libfuzzer"), "need a compiler's sanitizer runtime"),
    (("package index",), "need the package index (network)"),
    (("http extra", "pynomaly[http]"), "need the http extra"),
)


def skip_summary(reasons) -> str:
    """One line: how many tests were skipped for lack of what, most first ("" when none)."""
    import re
    from collections import Counter

    groups: Counter = Counter()
    for reason in reasons:
        reason = reason.removeprefix("Skipped: ")
        low = reason.lower()
        need = next((what for words, what in _LACKS if any(w.lower() in low for w in words)), None)
        if need is None:
            m = re.match(r"could not import '([\w.]+)'", reason)
            need = f"need {m.group(1).split('.')[0]}" if m else reason.splitlines()[0][:80] if reason else "no reason"
        groups[need] += 1
    return "skipped: " + ", ".join(f"{n} {what}" for what, n in groups.most_common()) if groups else ""


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    yield  # after the short summary (-ra lists each skip): the line lands next to the totals
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reasons.append(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr))
    line = skip_summary(reasons)
    if line:
        terminalreporter.write_line(line)
