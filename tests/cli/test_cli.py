"""The pynomaly command end to end (in subprocesses, on real datasets) and data loading."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pynomaly._errors import InvalidInputError
from pynomaly.store.dataio import load_table, write_result

from conftest import load_dataset


def run(*args, home=None, env=None, check=True):
    e = dict(os.environ)
    e.pop("PYNOMALY_HOME", None)
    e.update(env or {})
    cmd = [sys.executable, "-m", "pynomaly"] + (["--home", str(home)] if home else []) + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def read_csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, X, y=None, header=True, extra_text_column=False):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        names = [f"f{i}" for i in range(X.shape[1])]
        if header:
            w.writerow(["row_id"] + names + (["kind"] if extra_text_column else []))
        for i, r in enumerate(X):
            w.writerow([i] + [repr(float(v)) for v in r] + (["anomaly" if y[i] else "normal"] if extra_text_column else []))
    return [f"f{i}" for i in range(X.shape[1])]


@pytest.fixture
def cardio_csv(tmp_path):
    X, y = load_dataset("cardio")
    path = tmp_path / "cardio.csv"
    names = write_csv(path, X, y, extra_text_column=True)
    return path, X, y, names


def test_train_detect_list_show_export_import_delete(home, tmp_path, cardio_csv):
    """On both backends: ``--home FOLDER`` and ``--home postgresql://...``."""
    path, X, y, names = cardio_csv
    # a text column is named in the error; one line, no traceback, exit 1
    p = run("train", "--detector", "cardio", "--data", path, home=home, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "non-numeric column(s) ['kind']" in p.stderr
    cols = ",".join(names)
    p = run("train", "--detector", "cardio", "--data", path, "--columns", cols,
            "--param", "n_estimators=200", "--param", "random_state=0", home=home)
    assert "trained cardio v1 (IsolationForest) on 21 features" in p.stdout
    # detect selects the trained columns by name; output formats by extension
    out_csv, out_json = tmp_path / "scores.csv", tmp_path / "scores.json"
    p = run("detect", "--detector", "cardio", "--data", path, "--output", out_csv, home=home)
    assert "1831 rows" in p.stdout and "most anomalous rows" in p.stdout
    rows = read_csv(out_csv)
    scores = np.array([float(r["score"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    assert len(rows) == len(X)
    import pynomaly

    ref = pynomaly.IsolationForest(n_estimators=200, random_state=0).fit(X)
    np.testing.assert_allclose(scores, ref.decision_function(X), rtol=1e-15)
    np.testing.assert_array_equal(labels, ref.predict(X))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, scores) > 0.85
    p = run("detect", "--detector", "cardio", "--data", path, "--contamination", "0.05", "--output", out_json,
            "--json", home=home)
    summary = json.loads(p.stdout)
    assert abs(summary["anomalies_detected"] - 0.05 * len(X)) <= 2
    doc = json.loads(out_json.read_text())
    assert len(doc["scores"]) == len(X) and sum(doc["labels"]) == summary["anomalies_detected"]
    # list / show
    p = run("list", home=home)
    assert p.stdout.splitlines()[0].split()[:3] == ["NAME", "ALGORITHM", "STATUS"]
    assert "cardio" in p.stdout and "active" in p.stdout
    info = json.loads(run("show", "cardio", "--json", home=home).stdout)
    assert info["version"] == 1 and info["feature_names"] == names and len(info["results"]) == 2
    assert "FORMAT" in run("show", "cardio", home=home).stdout
    # retrain: next version
    run("train", "--detector", "cardio", "--data", path, "--columns", cols, "--param", "random_state=1", home=home)
    assert json.loads(run("show", "cardio", "--json", home=home).stdout)["version"] == 2
    # export version 1 and import it elsewhere: same scores
    f = tmp_path / "cardio.pnx"
    run("export", "cardio", f, "--version", "1", home=home)
    p = run("import", f, "--name", "edge", home=tmp_path / "edge")
    assert "imported edge v1" in p.stdout
    out2 = tmp_path / "edge.csv"
    run("detect", "--detector", "edge", "--data", path, "--output", out2, home=tmp_path / "edge")
    np.testing.assert_array_equal([float(r["score"]) for r in read_csv(out2)], scores)
    # archive / activate / delete
    run("archive", "cardio", home=home)
    p = run("detect", "--detector", "cardio", "--data", path, home=home, check=False)
    assert p.returncode == 1 and "archived" in p.stderr
    run("activate", "cardio", home=home)
    assert "deleted cardio (2 version(s))" in run("delete", "cardio", home=home).stdout
    assert "no detectors yet" in run("list", home=home).stdout


def test_errors_are_one_line_and_debug_shows_traceback(tmp_path):
    p = run("detect", "--detector", "nope", "--data", tmp_path / "x.csv", home=tmp_path, check=False)
    assert p.returncode == 1 and p.stderr.startswith("pynomaly: error:") and "Traceback" not in p.stderr
    X, _ = load_dataset("cardio")
    np.save(tmp_path / "x.npy", X)
    p = run("detect", "--detector", "nope", "--data", tmp_path / "x.npy", home=tmp_path, check=False)
    assert p.returncode == 1 and "no detector named 'nope'" in p.stderr
    p = run("--debug", "detect", "--detector", "nope", "--data", tmp_path / "x.npy", home=tmp_path, check=False)
    assert p.returncode == 1 and "Traceback" in p.stderr
    p = run("train", "--detector", "x", "--data", tmp_path / "x.npy", "--param", "oops", home=tmp_path, check=False)
    assert p.returncode == 2 and "KEY=VALUE" in p.stderr
    p = run("train", "--detector", "x", "--data", tmp_path / "x.npy", "--algorithm", "Nope", home=tmp_path, check=False)
    assert p.returncode == 1 and "unknown algorithm 'Nope'" in p.stderr
    p = run("train", "--detector", "x", "--data", tmp_path / "x.npy", "--param", "n_trees=5", home=tmp_path, check=False)
    assert p.returncode == 1 and "no parameter(s) ['n_trees']" in p.stderr
    p = run("detect", "--detector", "x", "--data", tmp_path / "x.npy", "--threshold", "1", "--contamination", "0.1",
            home=tmp_path, check=False)
    assert p.returncode == 2


def test_npz_input_and_optional_algorithms(tmp_path):
    X, y = load_dataset("thyroid")
    np.savez(tmp_path / "thyroid.npz", X=X, y=y)
    run("train", "--detector", "t", "--data", tmp_path / "thyroid.npz", "--param", "random_state=0", home=tmp_path)
    p = run("detect", "--detector", "t", "--data", tmp_path / "thyroid.npz", "--threshold", "0.6", "--json", home=tmp_path)
    assert json.loads(p.stdout)["threshold"] == 0.6
    pytest.importorskip("pyod")
    run("train", "--detector", "e", "--data", tmp_path / "thyroid.npz", "--algorithm", "pyod.ECOD", home=tmp_path)
    pytest.importorskip("torch")
    run("train", "--detector", "ae", "--data", tmp_path / "thyroid.npz", "--algorithm", "TorchAutoEncoder",
        "--param", "epochs=2", "--param", "hidden_neurons=[8, 4]", "--param", "random_state=0", home=tmp_path)
    info = json.loads(run("show", "ae", "--json", home=tmp_path).stdout)
    assert info["parameters"]["hidden_neurons"] == [8, 4] and info["versions"][0]["format"] == "torch"
    out = tmp_path / "ae.json"
    run("detect", "--detector", "ae", "--data", tmp_path / "thyroid.npz", "--output", out, home=tmp_path)
    assert len(json.loads(out.read_text())["scores"]) == len(X)


def test_quickstart_uses_a_throwaway_home_unless_one_is_given(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": "", "TMPDIR": str(tmp)}  # no PYNOMALY_HOME, no --home
    for _ in range(2):  # repeated runs: nothing accumulates in the user data folder
        p = run("quickstart", env=env)
        assert p.stdout.splitlines()[0].startswith("using a throwaway home " + str(tmp))
        assert "ROC-AUC" in p.stdout and "flagged" in p.stdout and "v1" in p.stdout
    assert not (tmp_path / ".local").exists() and list(tmp.iterdir()) == []  # and the throwaway went
    home = tmp_path / "kept"
    for version in ("v1", "v2"):  # a home given: kept, the next version each run
        p = run("quickstart", home=home, env=env)
        assert "throwaway" not in p.stdout and version in p.stdout
    assert "cardio-quickstart" in run("list", home=home, env=env).stdout
    p = run("quickstart", env={**env, "PYNOMALY_HOME": str(home)})
    assert "throwaway" not in p.stdout and "v3" in p.stdout


def test_the_command_runs_by_each_of_its_module_paths(tmp_path):
    """The command line became a package of command groups (issue 21): ``python -m
    pynomaly.cli`` and the quickstart's old path ``python -m pynomaly.quickstart`` still run."""
    e = {**os.environ, "PYNOMALY_HOME": str(tmp_path / "h")}
    p = subprocess.run([sys.executable, "-m", "pynomaly.cli", "list"], capture_output=True, text=True, env=e, timeout=120)
    assert p.returncode == 0 and "no detectors yet" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, "-m", "pynomaly.quickstart"], capture_output=True, text=True, env=e, timeout=300)
    assert p.returncode == 0 and "ROC-AUC" in p.stdout, p.stderr


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("pynomaly")
    if not exe.exists():
        pytest.skip("pynomaly is not installed as a package here (no console script next to python)")
    p = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "quickstart" in p.stdout


# -- data loading ----------------------------------------------------------------------------------
def test_csv_with_and_without_header(tmp_path):
    X, _ = load_dataset("glass")
    write_csv(tmp_path / "h.csv", X)
    A, names = load_table(tmp_path / "h.csv")
    assert names[0] == "row_id" and A.shape == (X.shape[0], X.shape[1] + 1)
    np.testing.assert_array_equal(A[:, 1:], X)
    B, names = load_table(tmp_path / "h.csv", columns=["f2", "f0"])
    np.testing.assert_array_equal(B, X[:, [2, 0]])
    assert names == ["f2", "f0"]
    np.savetxt(tmp_path / "n.csv", X, delimiter=",")
    C, names = load_table(tmp_path / "n.csv", columns=["1", 0])
    np.testing.assert_array_equal(C, X[:, [1, 0]])
    assert names == ["x1", "x0"]
    with pytest.raises(InvalidInputError, match="no column 'zzz'"):
        load_table(tmp_path / "h.csv", columns=["zzz"])
    with pytest.raises(InvalidInputError, match="out of range"):
        load_table(tmp_path / "n.csv", columns=[99])


def test_csv_errors_name_the_problem(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,c\n1,x,2\n3,y,4\n")
    with pytest.raises(InvalidInputError, match=r"non-numeric column\(s\) \['b'\]"):
        load_table(tmp_path / "t.csv")
    A, _ = load_table(tmp_path / "t.csv", columns=["a", "c"])
    np.testing.assert_array_equal(A, [[1, 2], [3, 4]])
    (tmp_path / "m.csv").write_text("a,b\n1,\n3,4\n")
    with pytest.raises(InvalidInputError, match=r"\['b'\] contain missing"):
        load_table(tmp_path / "m.csv")
    (tmp_path / "r.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(InvalidInputError, match="line 3 has 1 fields, expected 2"):
        load_table(tmp_path / "r.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(InvalidInputError, match="empty"):
        load_table(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("a,b\n")
    with pytest.raises(InvalidInputError, match="no data rows"):
        load_table(tmp_path / "h.csv")
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_table(tmp_path / "missing.csv")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(InvalidInputError, match="accepted formats"):
        load_table(tmp_path / "x.xlsx")


def test_numpy_files(tmp_path):
    X, y = load_dataset("wbc")
    np.save(tmp_path / "a.npy", X)
    np.testing.assert_array_equal(load_table(tmp_path / "a.npy")[0], X)
    np.savez(tmp_path / "b.npz", X=X, y=y)
    np.testing.assert_array_equal(load_table(tmp_path / "b.npz", columns=[0, 3])[0], X[:, [0, 3]])
    np.savez(tmp_path / "c.npz", data=X)
    np.testing.assert_array_equal(load_table(tmp_path / "c.npz")[0], X)
    np.savez(tmp_path / "d.npz", a=X, b=X)
    with pytest.raises(InvalidInputError, match="name the data array 'X'"):
        load_table(tmp_path / "d.npz")
    np.save(tmp_path / "e.npy", y)
    with pytest.raises(InvalidInputError, match="1-D array"):
        load_table(tmp_path / "e.npy")
    np.save(tmp_path / "f.npy", np.array([["a", "b"]]))
    with pytest.raises(InvalidInputError, match="numeric data is required"):
        load_table(tmp_path / "f.npy")


def test_parquet_in_and_out(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    X, _ = load_dataset("glass")
    table = pa.table({**{f"f{i}": X[:, i] for i in range(X.shape[1])}, "label": ["n"] * len(X), "n": np.arange(len(X))})
    pq.write_table(table, tmp_path / "g.parquet")
    with pytest.raises(InvalidInputError, match=r"non-numeric column\(s\) \['label'\]"):
        load_table(tmp_path / "g.parquet")
    A, names = load_table(tmp_path / "g.parquet", columns=[f"f{i}" for i in range(X.shape[1])])
    np.testing.assert_array_equal(A, X)
    B, names = load_table(tmp_path / "g.parquet", columns=["n", "f1"])
    np.testing.assert_array_equal(B, np.column_stack([np.arange(len(X)), X[:, 1]]))
    scores = np.linspace(0, 1, 5)
    write_result(tmp_path / "o.parquet", scores, (scores > 0.5).astype(int), {})
    t = pq.read_table(tmp_path / "o.parquet")
    np.testing.assert_array_equal(t.column("score").to_numpy(), scores)
    assert t.column("label").to_pylist() == [0, 0, 0, 1, 1]
    with pytest.raises(InvalidInputError, match="accepted output formats"):
        write_result(tmp_path / "o.xlsx", scores, scores > 0.5, {})
    assert not (tmp_path / "o.xlsx").exists()


def test_progress_only_on_a_terminal():
    import io

    from pynomaly.cli._common import Progress as _Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = _Progress(stream)
        p("loading data")
        p("training", 0.5)
        p.close()
        p("saving")  # after close: nothing more is drawn
    assert pipe.getvalue() == ""
    out = tty.getvalue()
    assert "loading data" in out and "training [" in out and " 50%" in out and "saving" not in out


def test_serve_hands_over_to_the_daemon(tmp_path):
    """`pynomaly serve` runs the daemon on the --home repository; a client gets the same
    scores as in-process scoring of the stored detector."""
    import signal

    import pynomaly
    from pynomaly import service

    home = tmp_path / "home"
    run("quickstart", home=home)
    assert "--socket" in run("serve", "--help", home=home).stdout
    sock = tmp_path / "d.sock"
    e = dict(os.environ)
    e.pop("PYNOMALY_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pynomaly", "--home", str(home), "serve", "--socket", str(sock)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), (line, proc.stderr.read() if proc.poll() is not None else "")
        from pynomaly.store.datasets import load_cardio

        X, _ = load_cardio()
        model = service.load_for_scoring(str(home), "cardio-quickstart").model
        with pynomaly.Client(str(sock)) as client:
            got = client.detect("cardio-quickstart", X[:50])
        np.testing.assert_array_equal(got.scores, model.decision_function(X[:50]))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0


def test_every_command_and_option_says_what_it_is():
    """Issue 16.12: each command has a description and each of its options a help text."""
    from pynomaly.cli import _build_parser
    from pynomaly.cli.faces import FACES as _FACES

    parser = _build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        if name in _FACES:  # the face's own parser answers `pynomaly serve --help` (tested with the face)
            continue
        assert p.description, name
        for a in p._actions:
            if not isinstance(a, argparse._HelpAction):
                assert a.help, f"{name} {a.option_strings or a.dest}"


def test_delete_asks_on_a_terminal(tmp_path):
    """Issue 16.12: on a terminal, delete asks first; --yes (and scripts, with no terminal) do not."""
    import pty

    X, _ = load_dataset("cardio")
    data = tmp_path / "x.npy"
    np.save(data, X[:300])
    run("train", "--detector", "d", "--data", data, "--param", "n_estimators=10", home=tmp_path)
    e = dict(os.environ)
    e.pop("PYNOMALY_HOME", None)
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "pynomaly", "--home", str(tmp_path), "delete", "d"],
                         stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    os.close(slave)
    os.write(master, b"n\n")
    out, err = p.communicate(timeout=60)
    os.close(master)
    assert p.returncode == 0 and "not deleted" in out, (out, err)
    assert "d " in run("list", home=tmp_path).stdout
    assert "deleted d (1 version(s))" in run("delete", "d", "--yes", home=tmp_path).stdout


def test_output_problems_are_refused_before_any_work(tmp_path):
    """Issue 16.3/16.7: a result that cannot be written is refused before the detection runs
    (and is stored), naming the real problem."""
    X, _ = load_dataset("cardio")
    data = tmp_path / "x.npy"
    np.save(data, X[:300])
    run("train", "--detector", "d", "--data", data, "--param", "n_estimators=10", home=tmp_path)
    bad = {
        str(tmp_path / "missing" / "out.csv"): "folder",
        str(tmp_path / "out.xlsx"): "accepted output formats",
        str(tmp_path): "accepted output formats",
    }
    for out, words in bad.items():
        p = run("detect", "--detector", "d", "--data", data, "--output", out, home=tmp_path, check=False)
        assert p.returncode == 1 and words in p.stderr and ".tmp" not in p.stderr, p.stderr
    env = {"PYTHONPATH": str(tmp_path / "nopyarrow")}
    (tmp_path / "nopyarrow").mkdir()
    (tmp_path / "nopyarrow" / "pyarrow.py").write_text("raise ImportError('no pyarrow here')\n")
    p = run("detect", "--detector", "d", "--data", data, "--output", tmp_path / "r.parquet", home=tmp_path, env=env,
            check=False)
    assert p.returncode == 1 and "needs pyarrow" in p.stderr and "detector" not in p.stderr.split("needs")[0]
    from pynomaly import service

    assert service.show(tmp_path, "d")["results"] == []  # nothing was stored by the refused runs
    p = run("detect", "--detector", "d", "--data", tmp_path, home=tmp_path, check=False)
    assert p.returncode == 1 and "is a folder" in p.stderr


def test_messages_that_used_to_mislead(tmp_path):
    """Issue 16.7: a ';'-separated CSV is read; a non-UTF-8 file, a damaged database and a
    damaged row are named with what to do; PyOD's import noise stays off stdout."""
    X, _ = load_dataset("cardio")
    semi = tmp_path / "semi.csv"
    semi.write_text("a;b;c\n" + "\n".join(";".join(repr(float(v)) for v in r[:3]) for r in X[:50]) + "\n")
    Xs, names = load_table(semi)
    assert names == ["a", "b", "c"] and Xs.shape == (50, 3)
    np.testing.assert_array_equal(Xs, X[:50, :3])
    latin = tmp_path / "latin.csv"
    latin.write_bytes("caf\xe9,b\n1,2\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match="not UTF-8 text .*byte 0xe9"):
        load_table(latin)

    home = tmp_path / "home"
    home.mkdir()
    (home / "pynomaly.db").write_bytes(b"this is not a database at all" * 100)
    p = run("list", home=home, check=False)
    assert p.returncode == 1 and str(home / "pynomaly.db") in p.stderr and "move it aside" in p.stderr

    good = tmp_path / "good"
    data = tmp_path / "x.npy"
    np.save(data, X[:200])
    run("train", "--detector", "d", "--data", data, "--param", "n_estimators=5", home=good)
    import sqlite3

    db = sqlite3.connect(good / "pynomaly.db")
    db.execute("UPDATE detectors SET parameters = ? WHERE name = 'd'", (b"\xc0\xff{",))
    db.commit()
    db.close()
    p = run("list", home=good, check=False)
    assert p.returncode == 1 and "row of detector 'd'" in p.stderr and "damaged" in p.stderr, p.stderr

    shim = tmp_path / "notorch"
    shim.mkdir()
    (shim / "torch.py").write_text("raise ImportError('no torch here')\n")
    p = run("train", "--detector", "n", "--data", data, "--algorithm", "pyod.NoSuch", home=tmp_path / "h2",
            env={"PYTHONPATH": str(shim)}, check=False)
    assert p.returncode == 1 and "NoSuch" in p.stderr and p.stdout == "", (p.stdout, p.stderr)


def test_progress_can_be_forced_for_logs(tmp_path):
    """Issue 16.10: --progress reports stages as plain lines when stderr is not a terminal,
    the result file's writing included."""
    X, _ = load_dataset("cardio")
    data = tmp_path / "x.npy"
    np.save(data, X)
    p = run("--progress", "train", "--detector", "d", "--data", data, "--param", "n_estimators=20", home=tmp_path)
    assert "training" in p.stderr and "saving" in p.stderr and "\r" not in p.stderr
    p = run("--progress", "detect", "--detector", "d", "--data", data, "--output", tmp_path / "o.csv", home=tmp_path)
    assert "scoring" in p.stderr and "writing" in p.stderr
    assert run("train", "--detector", "d", "--data", data, home=tmp_path).stderr == ""  # not asked, not a terminal


def test_a_database_home_from_the_command_line(pg_home, pg_server, tmp_path):
    """PYNOMALY_HOME as a URL; init, doctor, jobs and worker on it; what a database home
    cannot do, and a server that cannot be reached, as one line each."""
    X = np.random.default_rng(0).standard_normal((300, 4))
    np.save(tmp_path / "x.npy", X)
    env = {"PYNOMALY_HOME": pg_home}
    assert "home ready at postgresql://" in run("init", env=env).stdout
    job = run("train", "--detector", "d", "--data", tmp_path / "x.npy", "--background", env=env).stdout.split()[0]
    run("worker", "--max-jobs", "1", "--poll", "0.05", env=env)
    assert "succeeded" in run("jobs", "show", job, env=env).stdout
    assert "d " in run("list", env=env).stdout
    assert "no problems found" in run("doctor", env=env).stdout
    p = run("--key-file", tmp_path / "kek", "init", "--encrypt", env=env, check=False)
    assert p.returncode == 1 and "folder homes only" in p.stderr and "Traceback" not in p.stderr
    down = pg_server.url.replace(f"port={pg_server.port}", "port=1").replace("postgres@", "postgres:pw@")
    p = run("list", home=down, check=False)
    assert p.returncode == 1 and "cannot connect to the PostgreSQL home" in p.stderr
    assert "Traceback" not in p.stderr and ":pw@" not in p.stderr


def _write_named(path, X, names):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows([[repr(float(v)) for v in r] for r in X])


def test_detect_reads_trained_columns_by_name_and_refuses_a_header_without_them(tmp_path):
    X, _ = load_dataset("cardio")
    X = X[:300, :4]
    home = tmp_path / "home"
    _write_named(tmp_path / "train.csv", X, ["a", "b", "c", "d"])
    run("train", "--detector", "d", "--data", tmp_path / "train.csv", "--param", "random_state=0", home=home)
    run("detect", "--detector", "d", "--data", tmp_path / "train.csv", "--output", tmp_path / "0.csv", "--no-save",
        home=home)
    want = [float(r["score"]) for r in read_csv(tmp_path / "0.csv")]

    # The same columns in another order: taken by name.
    _write_named(tmp_path / "reordered.csv", X[:, [3, 1, 0, 2]], ["d", "b", "a", "c"])
    run("detect", "--detector", "d", "--data", tmp_path / "reordered.csv", "--output", tmp_path / "1.csv",
        "--no-save", home=home)
    assert [float(r["score"]) for r in read_csv(tmp_path / "1.csv")] == want

    # Headers naming none (or only some) of the trained features: refused, saying how to force it.
    for names in (["p", "q", "r", "s"], ["a", "b", "c", "e"]):
        _write_named(tmp_path / "other.csv", X, names)
        p = run("detect", "--detector", "d", "--data", tmp_path / "other.csv", "--no-save", home=home, check=False)
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert "other.csv has no column(s)" in p.stderr and "--columns" in p.stderr and "by position" in p.stderr
    # ... and --columns with indices reads the file by position, as asked.
    run("detect", "--detector", "d", "--data", tmp_path / "other.csv", "--columns", "0,1,2,3",
        "--output", tmp_path / "2.csv", "--no-save", home=home)
    assert [float(r["score"]) for r in read_csv(tmp_path / "2.csv")] == want
    # A file without a header has nothing to match: read by position, as before.
    np.savetxt(tmp_path / "bare.csv", X, delimiter=",", fmt="%.17g")
    run("detect", "--detector", "d", "--data", tmp_path / "bare.csv", "--output", tmp_path / "3.csv", "--no-save",
        home=home)
    assert [float(r["score"]) for r in read_csv(tmp_path / "3.csv")] == want
