"""Loaders of outside bytes (model files, export files, stored datasets) against hostile input.

A crafted file must be refused with the loader's documented error, never kill the process that
loads it: every load of crafted bytes here runs in a child process, so a signal shows up as a
failed test rather than a dead pytest. The fuzzers (tests/fuzz/) run in a bounded smoke below.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pynomaly import IsolationForest, KNN, LOF, ModelFormatError
from pynomaly.estimators import _format


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


# -- the fuzzers, in a bounded smoke: the corpus, then fresh mutations for a few seconds ---------
REPO = Path(__file__).resolve().parents[2]
FUZZ_SECONDS = 15


def _fuzz(cmd: list, corpus: str, tmp_path) -> None:
    found = tmp_path / "found"  # libFuzzer adds new inputs to the first folder: the repository's is only read
    found.mkdir()
    run = subprocess.run(
        [*cmd, str(found), corpus, f"-max_total_time={FUZZ_SECONDS}", "-timeout=20", "-rss_limit_mb=3000",
         f"-artifact_prefix={tmp_path}/"],
        cwd=REPO, capture_output=True, text=True, timeout=FUZZ_SECONDS + 300,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("timeout-*"))
    assert run.returncode == 0 and not crashes, f"{crashes}\n{run.stderr[-6000:]}"
    assert " DONE " in run.stderr or "Done " in run.stderr, run.stderr[-2000:]


def test_python_loaders_survive_the_fuzzer(tmp_path):
    """tests/fuzz/fuzz_loaders.py (atheris) over its corpus, then new inputs."""
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris, in the test extra)")
    _fuzz([sys.executable, "tests/fuzz/fuzz_loaders.py"], "tests/fuzz/corpus/loaders", tmp_path)


NATIVE_SOURCES = ["cpp/tests/fuzz_model_loaders.cpp", "cpp/common.cpp", "cpp/iforest.cpp", "cpp/iforest_kernels.cpp",
                  "cpp/explain.cpp",
                  "cpp/knn.cpp", "cpp/knn_kernels.cpp"]


@pytest.mark.skipif(shutil.which("clang++") is None, reason="needs clang++ with libFuzzer (apt install clang)")
def test_native_loaders_survive_the_fuzzer_under_sanitizers(tmp_path):
    """cpp/tests/fuzz_model_loaders.cpp (libFuzzer, ASan, UBSan) over its corpus, then new inputs."""
    exe = tmp_path / "fuzz_model_loaders"
    build = subprocess.run(
        ["clang++", "-std=c++17", "-O1", "-g", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
         "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-Icpp", *NATIVE_SOURCES, "-o", str(exe)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    if build.returncode != 0 and ("fuzzer" in build.stderr or "asan" in build.stderr or "ubsan" in build.stderr):
        pytest.skip(f"no libFuzzer or sanitizer runtime for clang++ here: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr
    _fuzz([str(exe)], "tests/fuzz/corpus/native", tmp_path)


# -- what a home holds: doctor loads it, and an import cannot smuggle a pickle ---------------------
def _crafted_export(tmp_path, **changes) -> Path:
    from pynomaly.store.exportfile import write_export

    blob = _reframe(_forest_bytes(), _format.KIND_IFOREST, **changes)
    return write_export(tmp_path / "crafted.export", name="crafted", algorithm="IsolationForest", parameters={},
                        blob=blob, n_features=3, threshold=0.5)


def test_doctor_loads_each_version_and_reports_a_crafted_one(tmp_path):
    """An admin's import of a crafted export (valid hashes) used to be called healthy by doctor,
    and crashed every process that loaded it; now doctor names it and exits non-zero."""
    from pynomaly import service

    home = tmp_path / "home"
    X = np.random.default_rng(0).normal(size=(64, 3))
    service.train(home, "good", X, params={"n_estimators": 5})
    service.import_detector(home, _crafted_export(tmp_path, n_features=2**62))
    found = service.doctor(home)
    assert [(v["detector"], v["version"]) for v in found["unloadable_versions"]] == [("crafted", 1)]
    assert "n_features" in found["unloadable_versions"][0]["error"]
    run = subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), "doctor"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "unloadable versions: 1" in run.stdout and "'crafted'" in run.stdout


def test_an_export_cannot_declare_a_pickle_native(tmp_path):
    """The format decides whether a pickle's signature is checked: an export of a PyOD
    detector (pickle) that says "native" was imported and then unpickled, unsigned, on load."""
    import pickle

    from pynomaly import ArtifactIntegrityError, service
    from pynomaly.store.exportfile import write_export

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = write_export(tmp_path / "evil.export", name="evil", algorithm="pyod.IForest", parameters={},
                        blob=pickle.dumps(Payload()), n_features=2, threshold=0.5, format="native")
    with pytest.raises(ArtifactIntegrityError, match="'native' is not how 'pyod.IForest' is stored"):
        service.import_detector(tmp_path / "home", path)
    with pytest.raises(ArtifactIntegrityError):
        service.load_file_for_scoring(path, "evil", 1)
    assert not marker.exists()


def test_a_tree_offset_past_the_node_arrays_is_refused():
    """Found by the native fuzzer: offsets rising past the arrays, then back to their length
    ([0, 3000, 2000] over 2000 nodes), made the first tree read past the arrays."""
    code = textwrap.dedent("""
        import numpy as np
        from pynomaly import ModelFormatError, _core
        n = 2000
        leaves = dict(feature=np.full(n, -1, np.int32), threshold=np.zeros(n, np.float32),
                      left=np.zeros(n, np.int32), leaf_value=np.ones(n))
        try:
            _core.Forest(3, 16, np.array([0, 3000, n], np.int32), **leaves)
        except ModelFormatError as e:
            print("refused:", e)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "refused: forest: tree 0 ends past the node arrays" in run.stdout, run.stdout + run.stderr

