"""Loaders of outside bytes (model files, export files, stored datasets) against hostile input.

A crafted file must be refused with the loader's documented error, never kill the process that
loads it: every load of crafted bytes here runs in a child process, so a signal shows up as a
failed test rather than a dead pytest. The fuzzers (tests/fuzz/) run in a bounded smoke below.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pynomaly import IsolationForest, KNN, LOF, ModelFormatError, _format


def _forest_bytes() -> bytes:
    X = np.random.default_rng(0).normal(size=(64, 3))
    return IsolationForest(n_estimators=3, max_samples=16, random_state=0).fit(X).to_bytes()


def _reframe(blob: bytes, kind: bytes, **changes) -> bytes:
    """``blob`` with header fields changed and a valid checksum: what an attacker can write."""
    header, data, end = _format.unpack(blob, kind, "a model")
    header.update(changes)
    return _format.pack(kind, header, [bytes(data[end:-4])])


def _load_in_child(path, loader: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import sys
        from pynomaly import IsolationForest, KNN, LOF, ModelFormatError
        data = open(sys.argv[1], "rb").read()
        try:
            {loader}(data)
        except ModelFormatError as e:
            print("refused:", e)
        else:
            print("loaded")
    """)
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)


# n_features of 2^62 made the native forest's block size 32768 / (4 * 2^62): a division by zero
# (SIGFPE) in every process that loaded the file.
FOREST_HEADERS = {
    "n_features 2^62 (SIGFPE)": {"n_features": 2**62},
    "n_features 2^61": {"n_features": 2**61},
    "n_features past int64": {"n_features": 2**64},
    "n_features negative": {"n_features": -3},
    "n_features a string": {"n_features": "3"},
    "psi 0": {"psi": 0},
    "psi past int64": {"psi": 2**70},
    "threshold a string": {"threshold": "high"},
    "threshold NaN": {"threshold": float("nan")},
    "params not an object": {"params": [1, 2]},
    "unknown parameter": {"params": {"n_trees": 3}},
    "contamination out of range": {"params": {"contamination": 7}},
    "max_samples_ a list": {"max_samples_": [1]},
}


@pytest.mark.parametrize("changes", FOREST_HEADERS.values(), ids=FOREST_HEADERS.keys())
def test_crafted_forest_header_is_refused_not_a_crash(tmp_path, changes):
    path = tmp_path / "crafted.pynomaly"
    path.write_bytes(_reframe(_forest_bytes(), _format.KIND_IFOREST, **changes))
    run = _load_in_child(path, "IsolationForest.from_bytes")
    assert run.returncode == 0, f"the loading process died ({run.returncode}): {run.stderr[-2000:]}"
    assert run.stdout.startswith("refused: model "), run.stdout + run.stderr


def test_native_forest_refuses_impossible_sizes_itself():
    """Defence in depth: the core checks what the Python reader checks, and the binding
    reports it as ModelFormatError."""
    code = textwrap.dedent("""
        import numpy as np
        from pynomaly import ModelFormatError, _core
        a = lambda v, t: np.asarray(v, dtype=t)
        for n_features, psi in ((2**62, 16), (2**61, 16), (3, 0), (3, -1)):
            try:
                _core.Forest(n_features, psi, a([0, 1], np.int32), a([-1], np.int32), a([0], np.float32),
                             a([0], np.int32), a([1.0], np.float64))
            except ModelFormatError as e:
                print("refused:", e)
            else:
                print("built", n_features, psi)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"the process died ({run.returncode}): {run.stderr[-2000:]}"
    assert run.stdout.count("refused: forest:") == 4, run.stdout


@pytest.mark.parametrize("tiny", [5e-324, 1.39e-309, 1e-300, 1e-160])
@pytest.mark.parametrize("algorithm", ["brute", "kd_tree"])
def test_neighbours_of_rows_of_tiny_values_are_exact(tiny, algorithm):
    """Found by the native fuzzer: rows whose values are all tiny (subnormal, or small enough
    that their squares underflow) made the brute-force screen's scale infinite, and the search
    returned neighbour indices past the end of the data (read out of bounds)."""
    from pynomaly import knn

    X = np.zeros((60, 3))
    X[0, 1], X[7, 2] = tiny, -tiny
    dist, idx = knn(X, 45, algorithm=algorithm)
    ref = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(ref, np.inf)
    want = np.argsort(ref, axis=1, kind="stable")[:, :45]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(dist, np.take_along_axis(ref, want, axis=1))
