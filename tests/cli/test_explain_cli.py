"""``pynomaly explain`` and ``pynomaly detect --explain K`` end to end (issue 22): the faces
print and write what the library's Explanation says, through the service use case."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pynomaly import service

from conftest import load_dataset
from test_cli import read_csv, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    X, _ = load_dataset("cardio")
    data = tmp / "cardio.csv"
    names = [f"f{j}" for j in range(X.shape[1])]
    with open(data, "w", newline="") as f:  # features only: the model sees exactly X's columns
        w = csv.writer(f)
        w.writerow(names)
        w.writerows([repr(float(v)) for v in r] for r in X)
    home = tmp / "home"
    run("train", "--detector", "cf", "--data", data, "--param", "random_state=0", home=home)
    return home, data, X, names


def test_explain_prints_the_librarys_top_features(trained):
    home, data, X, names = trained
    p = run("explain", "--detector", "cf", "--data", data, "--rows", "3,10-11", "--top", "2", "--json", home=home)
    doc = json.loads(p.stdout)
    assert (doc["method"], doc["output"]) == ("tree_shap", "log2_score")
    _, model = service.load_model(home, "cf")
    e = model.explain(X[[3, 10, 11]])
    assert [r["row"] for r in doc["rows"]] == [3, 10, 11]
    for r, row in enumerate(doc["rows"]):
        want = e.top(2)[r]
        assert [(f["feature"], f["value"], f["attribution"]) for f in row["top_features"]] == [
            (names[int(n[1:])], v, a) for n, v, a in want]
        assert row["base"] == e.base_values[r] and row["score"] == model.decision_function(X[[3, 10, 11]])[r]
    scores = model.decision_function(X)
    best = np.argsort(-scores, kind="stable")[:10]  # the default: the 10 highest-scoring rows
    doc = json.loads(run("explain", "--detector", "cf", "--data", data, "--top", "1", "--json", home=home).stdout)
    assert [r["row"] for r in doc["rows"]] == list(best)
    assert [r["top_features"][0]["attribution"] for r in doc["rows"]] == [t[0][2] for t in model.explain(X[best]).top(1)]
    table = run("explain", "--detector", "cf", "--data", data, "--method", "path", home=home).stdout
    assert "method path" in table and "ROW" in table and "FEATURE" in table
    assert table.splitlines()[2].split()[0] == str(best[0])  # highest-scoring rows first


def test_detect_explain_writes_flagged_rows_top_features(trained, tmp_path):
    home, data, X, names = trained
    out = tmp_path / "out.csv"
    run("detect", "--detector", "cf", "--data", data, "--explain", "3", "--output", out, "--no-save", home=home)
    rows = read_csv(out)
    _, model = service.load_model(home, "cf")
    flagged = np.flatnonzero(model.predict(X))
    e = model.explain(X[flagged])
    assert [int(r["index"]) for r in rows if r["top1_feature"]] == list(flagged)
    for i, row in zip(flagged[:20], e.top(3)):
        got = rows[i]
        for rank, (n, v, a) in enumerate(row, 1):
            assert got[f"top{rank}_feature"] == names[int(n[1:])]
            assert float(got[f"top{rank}_value"]) == v and float(got[f"top{rank}_attribution"]) == a
    js = tmp_path / "out.json"
    run("detect", "--detector", "cf", "--data", data, "--explain", "1", "--explain-method", "path", "--output", js,
        "--no-save", home=home)
    doc = json.loads(js.read_text())
    assert doc["top_features"][flagged[0]][0]["attribution"] == model.explain(X[flagged[:1]], method="path").top(1)[0][0][2]
    assert doc["top_features"][0 if 0 not in flagged else int(np.flatnonzero(model.predict(X) == 0)[0])] is None


def test_bad_requests_get_one_line_errors(trained, tmp_path):
    home, data, X, _ = trained
    for args, message in (
        (("explain", "--method", "nope"), "cannot explain with method 'nope'"),
        (("explain", "--top", "0"), "from 1 to 21"),
        (("explain", "--top", "22"), "from 1 to 21"),
        (("explain", "--rows", "1,x"), "rows must be indices"),
        (("explain", "--rows", f"{len(X)}"), f"row {len(X)} does not exist"),
        (("detect", "--explain", "2"), "give --output FILE"),
        (("detect", "--explain", "0", "--output", tmp_path / "o.csv"), "positive K"),
    ):
        p = run(*args, "--detector", "cf", "--data", data, home=home, check=False)
        assert p.returncode == 1 and message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
