"""`pynomaly train --algorithm HalfSpaceTrees` and `pynomaly stream` end to end (issue 23)."""

from __future__ import annotations

import csv

import numpy as np

from conftest import load_dataset
from test_cli import run


def test_train_then_stream_with_learning_writes_scores_flags_and_p_values(tmp_path):
    X, _ = load_dataset("cardio")
    X = (X - X.min(0)) / np.where(X.max(0) > X.min(0), X.max(0) - X.min(0), 1.0)
    np.save(tmp_path / "train.npy", X[:600])
    np.save(tmp_path / "stream.npy", X[600:1400])
    home = tmp_path / "home"
    run("train", "--detector", "s", "--data", tmp_path / "train.npy", "--algorithm", "HalfSpaceTrees",
        "--param", "seed=5", "--param", "window_size=100", home=home)
    out = tmp_path / "out.csv"
    p = run("--progress", "stream", "--detector", "s", "--data", tmp_path / "stream.npy", "--learn", "--alpha", "0.05",
            "--calibration", "300", "--output", out, home=home)
    assert "800 records through s (learning)" in p.stdout and "streaming" in p.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "score", "label", "p_value"] and len(rows) == 800
    from pynomaly.stream import HalfSpaceTrees

    expected = HalfSpaceTrees(seed=5, window_size=100).fit(X[:600]).score_learn_many(X[600:1400])
    np.testing.assert_array_equal([float(r["score"]) for r in rows], expected)
    assert all((r["label"] == "1") == (float(r["p_value"]) <= 0.05) for r in rows)
    bad = run("stream", "--detector", "s", "--data", tmp_path / "train.npy", "--alpha", "7", home=home, check=False)
    assert bad.returncode == 1 and "alpha" in bad.stderr
