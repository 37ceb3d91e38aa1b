"""The detection daemon end to end: a real daemon process, real fitted detectors (cardio).

Results must equal in-process scoring; clients are pynomaly.Client / AsyncClient here, a
hand-made MessagePack client in test_daemon_protocol.py, misbehaving ones in
test_daemon_hardening.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

import pynomaly
from pynomaly import wire
from pynomaly.client import DaemonError, DaemonInputError, DaemonUnavailableError

from _daemon_helpers import DaemonProcess, cardio, healthy, train, wait_until

pynomaly_daemon = pytest.importorskip("pynomaly_daemon")
from pynomaly_daemon import save_to_folder  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    v1 = train(0)
    save_to_folder(root, "cardio", v1)
    small = pynomaly.IsolationForest(n_estimators=10, random_state=3).fit(cardio()[:, :5])
    save_to_folder(root, "cardio5", small)
    return root, {"cardio": v1, "cardio5": small}


@pytest.fixture(scope="module")
def daemon(models, tmp_path_factory):
    # Large requests always go to the pool here and are split from 512 rows on, so the split
    # path is what the 1831-row cases below exercise (other modules keep the defaults).
    d = DaemonProcess(tmp_path_factory.mktemp("sock"), models[0], "--idle-inline-rows", "0", "--split-rows", "256")
    yield d
    assert d.stop() == 0


@pytest.mark.parametrize("rows", [1, 7, 64, 65, 1831])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_detect_equals_in_process(daemon, models, rows, dtype):
    model = models[1]["cardio"]
    X = cardio()[:rows].astype(dtype)
    with pynomaly.Client(daemon.sock) as c:
        r = c.detect("cardio", X, want=wire.WANT_ALL)
    expected = model.decision_function(X)
    np.testing.assert_array_equal(r.scores, expected)
    np.testing.assert_array_equal(r.labels, model.predict(X))
    np.testing.assert_array_equal(r.anomalies, np.flatnonzero(model.predict(X)))
    np.testing.assert_array_equal(r.probabilities, model.predict_proba(X)[:, 1])  # PyOD's 'linear', bit-equal
    assert r.scores.dtype == np.float64 and r.labels.dtype == np.int64
    assert (r.detector, r.version, r.threshold) == ("cardio", 1, model.threshold_)
    r.scores[0] = 0.0  # arrays are the caller's, writable


def test_detect_other_inputs(daemon, models):
    """Nested lists, ints, Fortran order and slices score as in process."""
    model = models[1]["cardio"]
    X = cardio()
    with pynomaly.Client(daemon.sock) as c:
        for data in (X[:5].tolist(), np.asfortranarray(X[:50]), X[::3, :], np.rint(X[:9]).astype(np.int32)):
            np.testing.assert_array_equal(c.detect("cardio", data).scores, model.decision_function(data))
        # default want is scores + labels
        r = c.detect("cardio", X[:3])
        assert r.probabilities is None and r.anomalies is None and r.labels is not None


def test_bad_input_is_refused_clearly(daemon):
    X = cardio()
    with pynomaly.Client(daemon.sock) as c:
        with pytest.raises(DaemonInputError, match="21") as e:
            c.detect("cardio", X[:2, :5])
        assert e.value.code == "bad_shape"
        bad = X[:3].copy()
        bad[1, 4] = np.nan
        with pytest.raises(DaemonInputError) as e:
            c.detect("cardio", bad)
        assert e.value.code == "bad_value" and "row 1" in e.value.message
        big = X.copy()
        big[1500, 2] = np.inf  # a request split across workers still names the right row
        with pytest.raises(DaemonInputError) as e:
            c.detect("cardio", big)
        assert e.value.code == "bad_value" and "row 1500" in e.value.message
        with pytest.raises(DaemonError) as e:
            c.detect("no-such-detector", X[:1])
        assert e.value.code == "unknown_detector" and not isinstance(e.value, ValueError)
        with pytest.raises(DaemonError) as e:
            c.detect("cardio", X[:1], version=99)
        assert e.value.code == "unknown_detector"
        with pytest.raises(pynomaly.InvalidInputError, match="2-dimensional"):
            c.detect("cardio", X[0])  # refused by the client, as in-process scoring does
        with pytest.raises(ValueError, match="want"):
            c.detect("cardio", X[:1], want=["everything"])
        # the connection is still good after every refusal
        assert c.detect("cardio", X[:1]).scores.shape == (1,)


def test_list_info_health_stats(daemon, models):
    with pynomaly.Client(daemon.sock) as c:
        names = {d.name: d for d in c.list()}
        assert set(names) == {"cardio", "cardio5"}
        assert names["cardio5"].n_features == 5 and names["cardio5"].algorithm == "IsolationForest"
        info = c.info("cardio5")
        assert (info.name, info.version, info.n_features, info.loaded) == ("cardio5", 1, 5, True)
        assert info.threshold == models[1]["cardio5"].threshold_
        h = c.health()
        assert h.status == "ok" and h.protocol == wire.PROTOCOL_VERSION and h.pid == daemon.proc.pid
        before = c.stats()
        c.detect("cardio5", cardio()[:10, :5])
        after = c.stats()
        assert after.requests["detect"] == before.requests.get("detect", 0) + 1
        assert after.rows_scored == before.rows_scored + 10
        assert after.cache_entries >= 2 and after.cache_bytes > 0
        with pytest.raises(DaemonError) as e:
            c.info("nope")
        assert e.value.code == "unknown_detector"


def test_async_client_many_in_flight_are_coalesced(daemon, models):
    model = models[1]["cardio"]
    X = cardio()[:300]

    async def go():
        async with pynomaly.AsyncClient(daemon.sock) as ac:
            before = await ac.stats()
            rs = await asyncio.gather(*[ac.detect("cardio", X[i : i + 1]) for i in range(len(X))])
            big = ac.detect("cardio", cardio(), want=["scores"])
            small = ac.detect("cardio", X[:2])
            rb, rsm = await asyncio.gather(big, small)
            after = await ac.stats()
            return rs, rb, rsm, before, after

    rs, rb, rsm, before, after = asyncio.run(go())
    np.testing.assert_array_equal(np.concatenate([r.scores for r in rs]), model.decision_function(X))
    np.testing.assert_array_equal(rb.scores, model.decision_function(cardio()))
    np.testing.assert_array_equal(rsm.scores, model.decision_function(X[:2]))
    # 300 calls made in one iteration go out in one write: most were scored together.
    assert after.coalesced_requests - before.coalesced_requests >= 100
    assert after.native_calls - before.native_calls < 50


def test_large_raw_rows_are_scored_in_place(daemon, models):
    """pynomaly.Client puts the raw rows last, so the daemon reads them where they landed."""
    X = cardio()
    with pynomaly.Client(daemon.sock) as c:
        before = c.stats().copied_rows
        for dtype in (np.float64, np.float32):
            c.detect("cardio", X.astype(dtype))
        for n in (700, 700, 999, 1000, 1001):  # frames of 117-168 KB, at any position in the stream
            c.detect("cardio", X[:n])
            c.detect("cardio", X[:3])
        assert c.stats().copied_rows == before


@pytest.mark.parametrize("n", [1, 390, 391, 2000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("version", [None, 3, 2**40])
def test_large_rows_are_sent_from_where_they_lie(n, dtype, version):
    """The clients send large raw rows without copying them into the frame; the bytes on the
    wire are exactly the encoded request's."""
    from pynomaly._client_io import _SCATTER_BYTES, _frame, _frame_parts
    from pynomaly.client import _rows

    X = np.random.default_rng(n).standard_normal((n, 21)).astype(dtype)
    req = wire.Detect(7, "a-detector", version, ["scores", "anomalies"], rows=_rows(X))
    head, rows = _frame_parts(req)
    assert (rows is None) == (X.nbytes < _SCATTER_BYTES)
    assert bytes(head) + (b"" if rows is None else bytes(rows)) == bytes(_frame(req))
    lists = wire.Detect(8, "a-detector", version, None, rows=X[:2].tolist())
    assert _frame_parts(lists) == (_frame(lists), None)


def test_coalescing_window_across_connections(tmp_path, models):
    """With a window, single-row requests from separate clients share native calls."""
    d = DaemonProcess(tmp_path, models[0], "--coalesce-window-ms", "100")
    model = models[1]["cardio"]
    X = cardio()
    barrier = threading.Barrier(16)
    results = {}

    def one(k: int) -> None:
        with pynomaly.Client(d.sock) as c:
            c.health()  # connected before the barrier
            barrier.wait()
            results[k] = c.detect("cardio", X[k : k + 1]).scores

    try:
        with pynomaly.Client(d.sock) as c:
            c.detect("cardio", X[:1])  # loaded
            before = c.stats()
        threads = [threading.Thread(target=one, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with pynomaly.Client(d.sock) as c:
            after = c.stats()
    finally:
        assert d.stop() == 0
    for k, s in results.items():
        np.testing.assert_array_equal(s, model.decision_function(X[k : k + 1]))
    assert len(results) == 16
    assert after.native_calls - before.native_calls < 16
    assert after.coalesced_requests - before.coalesced_requests >= 2


def test_cache_is_bounded_by_size(tmp_path):
    """Two detectors that do not fit the cache together: both still answer correctly."""
    models = tmp_path / "models"
    a, b = train(0), train(1)
    save_to_folder(models, "a", a)
    save_to_folder(models, "b", b)
    size = pynomaly.service.Scorer.of(a, "a").size_bytes  # what a cached version is charged (issue 16.9)
    d = DaemonProcess(tmp_path, models, "--cache-mb", str(1.5 * size / 2**20))
    X = cardio()[:20]
    try:
        with pynomaly.Client(d.sock) as c:
            for name, model in [("a", a), ("b", b), ("a", a), ("b", b)]:
                np.testing.assert_array_equal(c.detect(name, X).scores, model.decision_function(X))
                st = c.stats()
                assert st.cache_entries == 1 and st.cache_bytes <= 1.5 * size
            assert c.stats().cache_misses >= 4  # each switch reloaded the other one
    finally:
        assert d.stop() == 0
    assert d.log_text().count("cache: evicted") >= 3


def test_one_log_line_per_error(daemon):
    import socket as socket_mod

    before = daemon.log_text().count("\n")
    with pynomaly.Client(daemon.sock) as c:
        for bad in (cardio()[:1, :3], cardio()[:2, :4]):
            with pytest.raises(DaemonInputError):
                c.detect("cardio", bad)
        with pytest.raises(DaemonError):
            c.detect("missing", cardio()[:1])
    s = socket_mod.socket(socket_mod.AF_UNIX)
    s.connect(daemon.sock)
    s.sendall(b"\x00\x00\x00\x01\xc1")  # malformed MessagePack
    s.recv(1000)
    s.close()
    assert wait_until(lambda: daemon.log_text().count("\n") >= before + 4)
    new = daemon.log_text().splitlines()[before:]
    assert [line.split(": ")[1] for line in new] == ["bad_shape", "bad_shape", "unknown_detector", "bad_request"]


def test_hundred_concurrent_clients(daemon, models):
    model = models[1]["cardio"]
    X = cardio()
    expected = model.decision_function(X)
    failures = []

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        try:
            with pynomaly.Client(daemon.sock, timeout=60) as c:
                for _ in range(10):
                    n = int(rng.choice([1, 1, 1, 3, 70, 400]))
                    idx = rng.integers(0, len(X), n)
                    r = c.detect("cardio", X[idx])
                    if not np.array_equal(r.scores, expected[idx]):
                        failures.append((k, "scores differ"))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            failures.append((k, repr(e)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_socket_file_mode_and_default_location(daemon, tmp_path, models):
    assert stat.S_IMODE(os.stat(daemon.sock).st_mode) == 0o600
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    code = "from pynomaly import wire; print(wire.default_socket_path())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "pynomaly" / "daemon.sock")
    d = DaemonProcess(tmp_path, models[0], "--group", str(os.getgid()), name="g.sock")
    try:
        assert stat.S_IMODE(os.stat(d.sock).st_mode) == 0o660
        assert os.stat(d.sock).st_gid == os.getgid()
    finally:
        assert d.stop() == 0


def test_new_version_is_served_without_restart(tmp_path):
    """A version saved while clients query is picked up by the background refresh and by reload."""
    models = tmp_path / "models"
    v1, v2, v3 = train(0, 30), train(1, 30), train(2, 30)
    save_to_folder(models, "live", v1)
    d = DaemonProcess(tmp_path, models, "--refresh-interval", "0.1")
    X = cardio()
    by_version = {1: v1.decision_function(X[:40]), 2: v2.decision_function(X[:40]), 3: v3.decision_function(X[:40])}
    stop = threading.Event()
    seen, failures = [], []

    def query(k: int) -> None:
        try:
            with pynomaly.Client(d.sock) as c:
                i = 0
                while not stop.is_set():
                    rows = slice(i % 40, i % 40 + 1) if k % 2 else slice(0, 40)
                    r = c.detect("live", X[rows])
                    if not np.array_equal(r.scores, by_version[r.version][rows]):
                        failures.append((r.version, "scores of another version"))
                    seen.append(r.version)
                    i += 1
        except Exception as e:  # noqa: BLE001
            failures.append(repr(e))

    threads = [threading.Thread(target=query, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: len(seen) > 20)
        save_to_folder(models, "live", v2)  # picked up by the refresh, no reload
        assert wait_until(lambda: seen[-1] == 2 and 2 in seen[-8:]), "version 2 never served"
        save_to_folder(models, "live", v3)
        with pynomaly.Client(d.sock) as c:
            assert c.reload("live") and c.detect("live", X[:1]).version == 3  # reload: immediately
            n = len(seen)
            assert wait_until(lambda: len(seen) > n + 20)
            assert c.detect("live", X[:1], version=1).version == 1  # old versions stay addressable
    finally:
        stop.set()
        for t in threads:
            t.join()
        assert d.stop() == 0
    assert failures == []
    assert seen[-1] == 3 and set(seen) == {1, 2, 3}


def test_sighup_reloads(tmp_path):
    models = tmp_path / "models"
    save_to_folder(models, "m", train(0, 20))
    d = DaemonProcess(tmp_path, models, "--refresh-interval", "3600")
    try:
        with pynomaly.Client(d.sock) as c:
            assert c.detect("m", cardio()[:1]).version == 1
            save_to_folder(models, "m", train(1, 20))
            assert c.detect("m", cardio()[:1]).version == 1  # no refresh for an hour
            d.signal(signal.SIGHUP)
            assert wait_until(lambda: c.detect("m", cardio()[:1]).version == 2)
    finally:
        assert d.stop() == 0
    assert "SIGHUP" in d.log_text()


def test_sigterm_drains_requests_in_flight(tmp_path):
    """Requests sent before SIGTERM are all answered; then the daemon exits 0 and removes its socket."""
    models = tmp_path / "models"
    model = train(0)
    save_to_folder(models, "m", model)
    d = DaemonProcess(tmp_path, models)
    X = cardio()
    expected = model.decision_function(X)

    async def go():
        clients = [pynomaly.AsyncClient(d.sock, timeout=60) for _ in range(8)]
        for c in clients:
            await c.health()  # connected before the signal
        rng = np.random.default_rng(0)
        jobs, idxs = [], []
        for k in range(400):
            idx = rng.integers(0, len(X), int(rng.choice([1, 2, 200, 5000])))
            idxs.append(idx)
            jobs.append(asyncio.ensure_future(clients[k % 8].detect("m", X[idx])))
        # Wait until every request is written to its socket (answered or awaiting its reply).
        while sum(len(c._waiting) for c in clients) + sum(j.done() for j in jobs) < len(jobs):
            await asyncio.sleep(0.001)
        for c in clients:
            await c._writer.drain()
        d.signal(signal.SIGTERM)
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for c in clients:
            await c.close()
        return results, idxs

    results, idxs = asyncio.run(go())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    for r, idx in zip(results, idxs):
        np.testing.assert_array_equal(r.scores, expected[idx])
    assert d.proc.wait(20) == 0
    assert not os.path.exists(d.sock)
    d.stop()
    with pytest.raises(DaemonUnavailableError):
        pynomaly.Client(d.sock, timeout=2).health()


def test_stale_socket_replaced_live_one_kept(tmp_path, models):
    import socket as socket_mod

    path = tmp_path / "d.sock"
    dead = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays: what a killed daemon leaves behind
    assert path.exists()
    d = DaemonProcess(tmp_path, models[0])
    try:
        assert healthy(d.sock)
        second = subprocess.run(
            [sys.executable, "-m", "pynomaly_daemon", "--socket", d.sock, "--models", str(models[0])],
            capture_output=True, text=True, timeout=60,
        )
        assert second.returncode != 0 and "another daemon" in second.stderr
        assert healthy(d.sock)  # the live daemon was not disturbed
    finally:
        assert d.stop() == 0
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    out = subprocess.run(
        [sys.executable, "-m", "pynomaly_daemon", "--socket", str(regular), "--models", str(models[0])],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0 and "not a socket" in out.stderr and regular.read_text() == "keep me"


def test_client_errors_without_daemon(tmp_path):
    with pytest.raises(DaemonUnavailableError, match="no pynomaly daemon"):
        pynomaly.Client(str(tmp_path / "none.sock")).health()

    async def go():
        await pynomaly.AsyncClient(str(tmp_path / "none.sock")).health()

    with pytest.raises(DaemonUnavailableError):
        asyncio.run(go())


def test_client_timeout_on_a_silent_server(tmp_path):
    import socket as socket_mod

    path = str(tmp_path / "silent.sock")
    srv = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    try:
        c = pynomaly.Client(path, timeout=0.3)
        with pytest.raises(DaemonUnavailableError, match="timed out"):
            c.health()

        async def go():
            ac = pynomaly.AsyncClient(path, timeout=0.3)
            try:
                await ac.health()
            finally:
                await ac.close()

        with pytest.raises(DaemonUnavailableError, match="timed out"):
            asyncio.run(go())
    finally:
        srv.close()


def test_client_reconnects_after_daemon_restart(tmp_path, models):
    d = DaemonProcess(tmp_path, models[0])
    c = pynomaly.Client(d.sock, timeout=5)
    assert c.health().status == "ok"
    assert d.stop() == 0
    with pytest.raises(DaemonUnavailableError):
        c.health()
    d2 = DaemonProcess(tmp_path, models[0])
    try:
        assert c.health().pid == d2.proc.pid  # same Client object, new connection
    finally:
        c.close()
        assert d2.stop() == 0


def test_import_pynomaly_stays_cheap():
    code = (
        "import sys, pynomaly; assert 'msgspec' not in sys.modules and 'uvloop' not in sys.modules;"
        "pynomaly.Client; assert 'msgspec' in sys.modules and 'uvloop' not in sys.modules;"
        "assert 'pynomaly_daemon' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_main_entry_point_help(capsys):
    out = subprocess.run([sys.executable, "-m", "pynomaly_daemon", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--socket" in out.stdout and "--home" in out.stdout
    with pytest.raises(SystemExit) as e:
        pynomaly_daemon.main(["--help"], prog="pynomaly serve")
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: pynomaly serve")


def test_the_cache_counts_real_memory_and_drops_superseded_versions(tmp_path):
    """Issue 16.9: a cached version is charged what it holds (the compiled forest, not its
    file size), and a version superseded by a newer latest one is dropped unless a request
    named it by number."""
    models = tmp_path / "models"
    m1 = train(0, 100)
    save_to_folder(models, "m", m1)
    d = DaemonProcess(tmp_path, models, "--refresh-interval", "0.05")
    try:
        with pynomaly.Client(d.sock) as c:
            c.detect("m", cardio()[:2])
            st = c.stats()
            assert st.cache_entries == 1 and st.cache_bytes >= 2 * len(m1.to_bytes())
            in_process = pynomaly.service.Scorer.of(m1, "m").size_bytes  # the fitted one holds its labels_ too
            assert 0.8 * in_process <= st.cache_bytes <= in_process
            for seed in (1, 2, 3):
                save_to_folder(models, "m", train(seed, 100))
                assert wait_until(lambda: c.detect("m", cardio()[:2]).version == seed + 1, timeout=10)
            assert c.stats().cache_entries == 1  # v1..v3 went as soon as the next one served
            c.detect("m", cardio()[:2], version=2)  # asked for by number: kept
            save_to_folder(models, "m", train(4, 100))
            assert wait_until(lambda: c.detect("m", cardio()[:2]).version == 5, timeout=10)
            assert c.stats().cache_entries == 2
    finally:
        d.stop()
