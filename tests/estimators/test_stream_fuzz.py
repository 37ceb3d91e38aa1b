"""The streaming detectors' native state readers under libFuzzer with ASan and UBSan, in a
bounded smoke (cpp/tests/fuzz_stream_loaders.cpp over tests/fuzz/corpus/stream_native, then
new inputs); the Python framing is fuzzed with the other loaders (tests/fuzz/fuzz_loaders.py).
Run longer by hand::

    clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -Icpp cpp/tests/fuzz_stream_loaders.cpp \\
        cpp/common.cpp cpp/stream_common.cpp cpp/stream_hst.cpp cpp/stream_oif.cpp -o /tmp/fuzz_stream
    /tmp/fuzz_stream /tmp/found tests/fuzz/corpus/stream_native -max_total_time=1800
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from test_model_format_fuzz import REPO, _fuzz

SOURCES = ["cpp/tests/fuzz_stream_loaders.cpp", "cpp/common.cpp", "cpp/stream_common.cpp", "cpp/stream_hst.cpp",
           "cpp/stream_oif.cpp"]


@pytest.mark.skipif(shutil.which("clang++") is None, reason="needs clang++ with libFuzzer (apt install clang)")
def test_stream_state_readers_survive_the_fuzzer_under_sanitizers(tmp_path):
    exe = tmp_path / "fuzz_stream_loaders"
    build = subprocess.run(
        ["clang++", "-std=c++17", "-O1", "-g", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
         "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-Icpp", *SOURCES, "-o", str(exe)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    if build.returncode != 0 and ("fuzzer" in build.stderr or "asan" in build.stderr or "ubsan" in build.stderr):
        pytest.skip(f"no libFuzzer or sanitizer runtime for clang++ here: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr
    _fuzz([str(exe)], "tests/fuzz/corpus/stream_native", tmp_path)
