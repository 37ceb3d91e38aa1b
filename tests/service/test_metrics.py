"""Metrics (pynomaly.metrics and the daemon's --metrics-port / metrics op): the text format is
checked with prometheus_client's own parser, the values against what was done."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

import pynomaly
from pynomaly.service import metrics
from pynomaly import service

from _daemon_helpers import DaemonProcess, cardio

parser = pytest.importorskip("prometheus_client.parser")


def families(text: str) -> dict:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def value(fams, family, sample=None, **labels):
    for s in fams[family].samples:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((family, labels))


def test_text_format_parses_with_prometheus_client():
    reg = metrics.Registry()
    c = reg.counter("t_requests", "Requests; with \\ and\nnewline", ("op", "code"))
    c.inc(op="detect", code="ok")
    c.inc(2, op="detect", code="ok")
    c.inc(op='we"ird\\op\n', code="x")
    g = reg.gauge("t_bytes", "Bytes")
    g.set(12.5)
    h = reg.histogram("t_seconds", "Durations", ("op",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 3.0):
        h.observe(v, op="a")
    reg.gauge("t_fn", "From a function", ("state",), fn=lambda: {("queued",): 3, ("running",): 1})
    fams = families(metrics.render(reg).decode())
    assert fams["t_requests"].type == "counter"
    assert value(fams, "t_requests", op="detect", code="ok") == 3
    assert value(fams, "t_requests", op='we"ird\\op\n') == 1  # escaped and read back
    assert fams["t_requests"].documentation == "Requests; with \\ and\nnewline"
    assert value(fams, "t_bytes") == 12.5
    assert value(fams, "t_seconds", "t_seconds_bucket", le="0.1") == 1
    assert value(fams, "t_seconds", "t_seconds_bucket", le="1.0") == 3  # cumulative
    assert value(fams, "t_seconds", "t_seconds_bucket", le="+Inf") == 4
    assert value(fams, "t_seconds", "t_seconds_count") == 4
    assert value(fams, "t_seconds", "t_seconds_sum") == pytest.approx(4.05)
    assert value(fams, "t_fn", state="queued") == 3


def test_label_values_are_bounded():
    c = metrics.Counter("t_rows", "Rows", ("detector",))
    for i in range(metrics.MAX_SERIES + 50):
        c.inc(detector=f"d{i}")
    assert len(c._values) == metrics.MAX_SERIES + 1
    assert c.value(detector=metrics.OTHER) == 50
    big = metrics.Counter.of("t_x", "X", ("detector",), {(f"d{i}",): 1 for i in range(metrics.MAX_SERIES + 7)})
    assert len(big._values) == metrics.MAX_SERIES + 1 and big.value(detector=metrics.OTHER) == 7
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(detector="a", other="b")
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1, detector="a")


def test_latency_histogram_buckets_match_a_plain_count_and_cap_series():
    h = metrics.Histogram("t_seconds", "T", ("op", "detector", "face"))
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.exponential(1e-3, 500), list(h.buckets), [20.0, 5e-5, 0.0]])
    for v in values:
        h.observe_labelled(float(v), ("detect", "d", "daemon"))
    h.observe_labelled(0.003, ("detect", "d", "daemon"), n=4)
    values = np.concatenate([values, [0.003] * 4])
    got = {le: v for _, names, k, v in h.samples() if names[-1] == "le" for le in [k[-1]]}
    for b in h.buckets:  # cumulative: observations <= the bound, as Prometheus defines le
        assert got[metrics._num(b)] == np.count_nonzero(values <= b), b
    assert got["+Inf"] == len(values)
    assert h._values[("detect", "d", "daemon")][-1] == pytest.approx(values.sum())
    for i in range(metrics.MAX_SERIES + 5):
        h.observe_labelled(0.001, ("detect", f"d{i}", "http"))
    assert len(h._values) == metrics.MAX_SERIES + 1
    assert h._values[(metrics.OTHER,) * 3][-2] == 6  # "d" took a series first


def test_service_detections_are_counted(tmp_path):
    home = tmp_path / "home"
    X = cardio()
    service.train(home, "m", X, params={"random_state": 0})
    before_rows = metrics.ROWS.value(detector="m")
    r = service.detect(home, "m", X, save=False)
    assert metrics.ROWS.value(detector="m") - before_rows == len(X)
    timed = metrics.REQUEST_SECONDS._values[("detect", "m", "batch")]
    assert timed[-2] == 1 and timed[-1] == pytest.approx(r.metrics["processing_time_ms"] / 1e3)
    fams = families(metrics.render().decode())
    assert value(fams, "pynomaly_anomalies", detector="m") >= int(r.labels.sum())


def test_register_prometheus_exposes_the_same_metrics():
    from prometheus_client import CollectorRegistry, generate_latest

    reg = metrics.Registry()
    reg.counter("t_total_things", "Things").inc(4)
    prom = CollectorRegistry()
    metrics.register_prometheus(reg, prom)
    assert value(families(generate_latest(prom).decode()), "t_total_things") == 4


def test_importing_pynomaly_metrics_needs_no_prometheus_client():
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "import pynomaly, pynomaly.metrics as m\n"
            "assert m.render().startswith(b'# HELP')\n"
            "try:\n    m.register_prometheus()\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pynomaly[metrics]" in out.stdout


# -- the daemon --------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("mode", [[], ["--no-native-loop"], ["--no-fast-path"]],
                         ids=["native-loop", "uvloop-fast-path", "python-path"])
def test_daemon_metrics_port_and_op(tmp_path, mode):
    home = tmp_path / "home"
    X = cardio()
    service.train(home, "cardio", X, params={"random_state": 0, "contamination": 0.1})
    labels = service.load_for_scoring(home, "cardio").labels(service.load_for_scoring(home, "cardio").score(X))
    port = free_port()
    d = DaemonProcess(tmp_path, None, "--home", str(home), "--metrics-port", str(port), *mode)
    try:
        with pynomaly.Client(d.sock) as c:
            for i in range(100):
                c.detect("cardio", X[i : i + 1])
            c.detect("cardio", X)
            c.health()
            import time

            time.sleep(0.3)  # the native loop reports its counts every 50 ms
            via_op = families(c.metrics())
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            fams = families(r.read().decode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert e.value.code == 404
        e.value.close()
    finally:
        assert d.stop() == 0
    for f in (fams, via_op):
        assert value(f, "pynomaly_requests", op="detect") == 101
        assert value(f, "pynomaly_detections", detector="cardio") == 101
        assert value(f, "pynomaly_rows_scored", detector="cardio") == 100 + len(X)
        assert value(f, "pynomaly_anomalies", detector="cardio") == int(labels[:100].sum()) + int(labels.sum())
        assert value(f, "pynomaly_model_cache_bytes") > 0
        assert value(f, "pynomaly_jobs", state="queued") == 0
    assert value(fams, "pynomaly_request_duration_seconds", "pynomaly_request_duration_seconds_count", op="health") == 1
    # every detect timed once, on whichever path answered it (issue 26)
    for f in (fams, via_op):
        timed = dict(op="detect", detector="cardio", face="daemon")
        assert value(f, "pynomaly_request_duration_seconds", "pynomaly_request_duration_seconds_count", **timed) == 101
        assert value(f, "pynomaly_request_duration_seconds", "pynomaly_request_duration_seconds_bucket", le="+Inf",
                     **timed) == 101
        assert 0 < value(f, "pynomaly_request_duration_seconds", "pynomaly_request_duration_seconds_sum", **timed) < 60


def test_daemon_refuses_a_bad_metrics_port(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pynomaly_daemon", "--socket", str(tmp_path / "s"), "--home",
                          str(tmp_path / "h"), "--metrics-port", "70000"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "--metrics-port must be a TCP port" in out.stderr
    port = free_port()
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", port))
    busy.listen()
    try:
        out = subprocess.run([sys.executable, "-m", "pynomaly_daemon", "--socket", str(tmp_path / "s"), "--home",
                              str(tmp_path / "h"), "--metrics-port", str(port)], capture_output=True, text=True,
                             timeout=60)
    finally:
        busy.close()
    assert out.returncode == 1 and "cannot serve metrics" in out.stderr and "Traceback" not in out.stderr


def test_the_jobs_gauge_needs_only_the_metrics_module(tmp_path):
    """metrics imports nothing of the service (issue 21): the jobs table's reader is handed to
    it when the service package loads, so a face that imports only metrics still has the gauge."""
    code = ("import sys; from pynomaly.service import metrics; [g] = metrics.jobs_collector(sys.argv[1])(); "
            "print(sorted((k[0], v) for _, _, k, v in g.samples()))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "h")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "('queued', 0)" in out.stdout
