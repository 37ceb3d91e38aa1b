"""``pynomaly drift`` end to end, in subprocesses as a user runs it: batch ``pynomaly detect``
fills the live window, ``drift`` ranks and flags, ``--data`` compares offline,
``--set-reference`` gives an imported version its reference; two processes on one PostgreSQL
home add up to one window."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pynomaly import service

from conftest import drift_halves
from test_cli import run

PARAMS = {"n_estimators": 50, "random_state": 0}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """cardio shuffled and halved, as .npy files: the training half, the served half, and the
    served half with feature x3 moved by about one standard deviation."""
    train, serve, moved = drift_halves()
    d = tmp_path_factory.mktemp("data")
    for name, rows in (("train", train), ("serve", serve), ("moved", moved)):
        np.save(d / f"{name}.npy", rows)
    return d


def test_detect_then_drift_ranks_and_flags_the_moved_feature(tmp_path, files):
    for name in ("moved", "same"):
        run("train", "--detector", name, "--data", files / "train.npy", "--param", "n_estimators=50",
            "--param", "random_state=0", home=tmp_path)
    run("detect", "--detector", "moved", "--data", files / "moved.npy", home=tmp_path)
    run("detect", "--detector", "same", "--data", files / "serve.npy", "--no-save", home=tmp_path)

    doc = json.loads(run("drift", "--detector", "moved", "--json", home=tmp_path).stdout)
    assert doc["drift"] and doc["rows"] == 916 and doc["features"][0]["feature"] == "x3"
    assert [f["feature"] for f in doc["features"] if f["drift"]] == ["x3"]
    assert set(doc["features"][0]) == {"feature", "psi", "ks", "ks_error", "p_value", "wasserstein",
                                       "wasserstein_error", "drift"}
    table = run("drift", "--detector", "moved", "--window", "15m", home=tmp_path).stdout.splitlines()
    assert table[0].startswith("detector moved v1: DRIFT (PSI >= 0.2) in 916 rows of the last 15 min")
    assert table[1].split() == ["feature", "PSI", "KS", "p", "W1", "decision"]
    assert table[2].split()[0] == "x3" and table[2].split()[-1] == "DRIFT"
    assert all(line.split()[-1] == "-" for line in table[3:] if line.split()[0].startswith(("x", "(")))

    calm = json.loads(run("drift", "--detector", "same", "--json", home=tmp_path).stdout)
    assert not calm["drift"] and calm["rows"] == 916
    offline = json.loads(run("drift", "--detector", "same", "--data", files / "moved.npy", "--json",
                             home=tmp_path).stdout)
    assert offline["source"] == "data" and offline["features"][0]["feature"] == "x3" and offline["drift"]
    assert offline["features"] == doc["features"]  # the same rows, live or offline, same model


def test_a_window_too_small_decides_nothing_and_says_so(tmp_path, files):
    service.train(tmp_path, "few", np.load(files / "train.npy"), "IsolationForest", PARAMS)
    np.save(tmp_path / "few.npy", np.load(files / "moved.npy")[:120])
    run("detect", "--detector", "few", "--data", tmp_path / "few.npy", "--no-save", home=tmp_path)
    doc = json.loads(run("drift", "--detector", "few", "--json", home=tmp_path).stdout)
    assert doc["drift"] is None and doc["min_rows"] == 300 and doc["rows"] == 120
    assert doc["reason"] == "120 rows counted, at least 300 needed to decide drift"
    assert doc["features"][0]["feature"] == "x3" and doc["features"][0]["psi"] >= 0.2  # statistics still there
    assert {f["drift"] for f in doc["features"]} == {None} and doc["score"]["drift"] is None
    table = run("drift", "--detector", "few", home=tmp_path).stdout.splitlines()
    assert table[0] == ("detector few v1: undecided in 120 rows of the last 1 h: 120 rows counted, at least 300 "
                        "needed to decide drift (--min-rows)")
    assert all(line.split()[-1] == "undecided" for line in table[2:] if line.split()[0].startswith(("x", "(")))
    decided = json.loads(run("drift", "--detector", "few", "--json", "--min-rows", "100", home=tmp_path).stdout)
    assert decided["drift"] is True and decided["reason"] is None
    assert decided["features"][0]["feature"] == "x3" and decided["features"][0]["drift"]
    offline = json.loads(run("drift", "--detector", "few", "--data", tmp_path / "few.npy", "--json",
                             home=tmp_path).stdout)
    assert offline["drift"] is None and offline["reason"] == doc["reason"]
    p = run("drift", "--detector", "few", "--min-rows", "0", home=tmp_path, check=False)
    assert p.returncode == 1 and "min_rows must be a positive whole number of rows, got 0" in p.stderr


def test_bad_input_gets_one_clear_line(tmp_path, files):
    service.train(tmp_path, "fresh", np.load(files / "train.npy"), "IsolationForest", PARAMS)
    p = run("drift", "--detector", "nope", home=tmp_path, check=False)
    assert p.returncode == 1 and p.stderr.strip() == (
        f"pynomaly: error: no detector named 'nope' in {tmp_path}; `pynomaly list` shows the detectors there")
    p = run("drift", "--detector", "fresh", home=tmp_path, check=False)
    assert p.returncode == 1 and "no rows of detector 'fresh' version 1 were served in the last 1 h" in p.stderr
    p = run("drift", "--detector", "fresh", "--window", "soon", home=tmp_path, check=False)
    assert p.returncode == 2 and "'soon' is not a window" in p.stderr
    service.export(tmp_path, "fresh", tmp_path / "f.pnx")
    run("import", tmp_path / "f.pnx", "--name", "imported", home=tmp_path / "other")
    p = run("drift", "--detector", "imported", "--data", files / "serve.npy", home=tmp_path / "other", check=False)
    assert p.returncode == 1 and "has no drift reference" in p.stderr and "--set-reference" in p.stderr
    out = run("drift", "--detector", "imported", "--set-reference", "--data", files / "train.npy",
              home=tmp_path / "other").stdout
    assert out.startswith("reference of imported v1 set from 915 rows, 21 features (")
    doc = json.loads(run("drift", "--detector", "imported", "--data", files / "moved.npy", "--json",
                         home=tmp_path / "other").stdout)
    assert doc["features"][0]["feature"] == "x3"
    trail = [e["action"] for e in service.audit_entries(tmp_path / "other")]
    assert "drift.set_reference" in trail


def test_two_processes_on_one_postgresql_home_read_one_window(pg_home, files):
    service.train(pg_home, "shared", np.load(files / "train.npy"), "IsolationForest", PARAMS)
    moved = np.load(files / "moved.npy")
    np.save(files / "first.npy", moved[:400])
    np.save(files / "second.npy", moved[400:])
    run("detect", "--detector", "shared", "--data", files / "first.npy", "--no-save", home=pg_home)
    run("detect", "--detector", "shared", "--data", files / "second.npy", "--no-save", home=pg_home)
    live = json.loads(run("drift", "--detector", "shared", "--json", home=pg_home).stdout)
    from pynomaly.service import drift

    whole = drift.compare_data(pg_home, "shared", moved)
    assert live["rows"] == 916 and live["features"] == whole["features"] and live["score"] == whole["score"]
