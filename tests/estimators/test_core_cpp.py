"""The C++ core on its own: it builds and runs without Python, natively and for aarch64 (the
portable baseline), and gives the same bits as the binding on every SIMD target."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pynomaly

from conftest import REPO, SIMD_TARGETS

CORE = ["cpp/common.cpp", "cpp/iforest.cpp", "cpp/iforest_kernels.cpp"]
FLAGS = ["-std=c++17", "-O2", "-fopenmp", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror",
         "-Wno-maybe-uninitialized", "-Icpp"]


def _build(compiler: str, out: Path, extra=(), main="cpp/tests/smoke_iforest.cpp") -> Path:
    cmd = [compiler, *FLAGS, *extra, main, *CORE, "-o", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
    return out


def _binding_result() -> str:
    """The same data and forest through the Python binding (the LCG reproduced in NumPy)."""
    n, d = 3000, 7
    s = np.uint64(42)
    vals = np.empty(n * d)
    a, c = np.uint64(6364136223846793005), np.uint64(1442695040888963407)
    with np.errstate(over="ignore"):
        for i in range(n * d):
            s = s * a + c
            vals[i] = float(int(s) >> 11) * 2.0**-53 * 10.0 - 5.0
    X = vals.reshape(n, d)
    forest = pynomaly._core.Forest.train(X, 100, 256, 0, 7, 2)
    scores = forest.score(X, 2)
    return f"{forest.depth} {_seq_sum(scores)!r} {float(scores[0])!r}"


def _seq_sum(x) -> float:
    total = 0.0
    for v in x:  # the C++ program sums in order; np.sum is pairwise
        total += float(v)
    return total


def _parse(line: str):
    target, depth, total, first = line.split()
    return target, f"{depth} {float(total)!r} {float(first)!r}"


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_core_builds_and_runs_without_python(tmp_path):
    exe = _build("g++", tmp_path / "smoke")
    want = _binding_result()
    for target in SIMD_TARGETS:
        out = subprocess.run([str(exe), target], capture_output=True, text=True, check=True, timeout=120)
        got_target, got = _parse(out.stdout)
        assert got_target == target
        assert got == want, (target, got, want)
    bad = subprocess.run([str(exe), "sse9"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "unknown SIMD target" in bad.stderr


def _kernels_ok(stdout: str, target: str, expect_kernels) -> None:
    """The check program's report: every kernel of the target checked, none mismatched."""
    lines = stdout.splitlines()
    assert not [ln for ln in lines if ln.startswith("MISMATCH")], stdout
    assert lines[-len(expect_kernels) - 1] == f"target {target}", stdout
    got = {ln.split()[1]: ln.split()[2:] for ln in lines if ln.startswith("kernel ")}
    assert sorted(got) == sorted(expect_kernels), stdout
    # 12 depths x (hand-built, trained) x 14 row counts x 2 thread counts, all but a few counts
    # within the 1100 rows
    assert all(status == "ok" and int(n) == 672 for status, n in got.values()), stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_every_kernel_equals_reference_walk_natively(tmp_path):
    exe = _build("g++", tmp_path / "check", main="cpp/tests/iforest_kernels_check.cpp")
    for target in SIMD_TARGETS:
        pynomaly._core.set_simd(target)
        try:
            want = [k for k in pynomaly.build_info()["iforest_kernels"] if k != "reference"]
        finally:
            pynomaly._core.set_simd(pynomaly.build_info()["simd_best"])
        out = subprocess.run([str(exe), target], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        _kernels_ok(out.stdout, target, want)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs the aarch64 cross compiler (Debian: g++-aarch64-linux-gnu)")
def test_portable_baseline_builds_and_agrees_on_aarch64(tmp_path):
    exe = _build("aarch64-linux-gnu-g++", tmp_path / "smoke_arm", extra=["-static"])
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("built for aarch64; running it needs qemu-aarch64 (Debian: qemu-user)")
    want = _binding_result()
    for arg, expect in (([], "neon"), (["baseline"], "baseline"), (["neon"], "neon")):
        out = subprocess.run(["qemu-aarch64", str(exe), *arg], capture_output=True, text=True, check=True, timeout=600)
        target, got = _parse(out.stdout)
        assert target == expect  # NEON is part of AArch64: the default there
        assert got == want, (arg, got, want)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs the aarch64 cross compiler (Debian: g++-aarch64-linux-gnu)")
def test_neon_kernel_equals_reference_walk_on_aarch64(tmp_path):
    exe = _build("aarch64-linux-gnu-g++", tmp_path / "check_arm", extra=["-static"],
                 main="cpp/tests/iforest_kernels_check.cpp")
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("built for aarch64; running it needs qemu-aarch64 (Debian: qemu-user)")
    for target, kernels in (("neon", ["neon-hybrid", "portable", "few-rows"]), ("baseline", ["portable", "few-rows"])):
        out = subprocess.run(["qemu-aarch64", str(exe), target], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        _kernels_ok(out.stdout, target, kernels)
