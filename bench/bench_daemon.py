"""Benchmark of the detection daemon, with Redis as the yardstick in the same run.

    python bench/bench_daemon.py [--seconds 3] [--dataset cardio]

1. Single-row ``detect``: requests/s and p50/p99 latency at 1, 8 and 64 concurrent clients,
   driven by bench/loadgen.c (compiled here with the system C compiler): one thread, epoll,
   one request in flight per connection (or 16, pipelined). The same run drives Redis ``GET``
   of a 3-byte value over a Unix socket with the same load generator in its RESP mode, so both
   servers face one lean client; ``redis-benchmark -t get`` (a heavier client, which flatters
   the ratio) is reported alongside for reference (``--no-redis-benchmark`` skips it).
2. Batch ``detect`` of 1k and 100k rows through ``pynomaly.Client`` in rows/s, against
   in-process ``decision_function`` on the same rows and detector.

The detector is a default ``pynomaly.IsolationForest`` (100 trees) trained on a real dataset
(../shared/datasets, or the bundled cardio). Everything shares the machine's cores: the load
generator, the daemon and Redis, as in production on an edge box.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import pynomaly
from pynomaly import wire
from pynomaly.client import _frame, _rows

HERE = Path(__file__).resolve().parent
CONCURRENCY = (1, 8, 64)


def load_dataset(name: str) -> np.ndarray:
    root = Path(os.environ.get("PYNOMALY_DATASETS", HERE.parent.parent / "shared" / "datasets"))
    path = root / f"{name}.npz"
    if not path.exists():
        path = Path(pynomaly.__file__).parent / "data" / "cardio.npz"
    return np.load(path)["X"].astype(np.float64), path.stem


def cpu_model() -> str:
    """The CPU's model name (what `lscpu` prints), for the first line of every result."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def prepare(tmp: Path, model, X) -> "tuple[Path, Path]":
    """A model folder holding ``model`` as "bench" under tmp/models, the compiled load
    generator, and the single-row request frame it sends: ``(loadgen, frame)``."""
    from pynomaly_daemon import save_to_folder

    save_to_folder(tmp / "models", "bench", model)
    loadgen = tmp / "loadgen"
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", str(loadgen), str(HERE / "loadgen.c")], check=True)
    frame = tmp / "frame.bin"
    frame.write_bytes(_frame(wire.Detect(1, "bench", None, ["scores", "labels"], rows=_rows(X[:1]))))
    return loadgen, frame


def start_daemon(tmp: Path, models: Path, extra=()) -> subprocess.Popen:
    sock = tmp / "daemon.sock"
    p = subprocess.Popen(
        [sys.executable, "-m", "pynomaly_daemon", "--socket", str(sock), "--models", str(models), "--log-level", "WARNING",
         *extra],
        stdout=subprocess.PIPE, stderr=open(tmp / "daemon.log", "w"), text=True,
    )
    line = p.stdout.readline()
    if not line.startswith("READY"):
        raise SystemExit(f"daemon did not start: {line!r}; see {tmp / 'daemon.log'}")
    return p


def run_loadgen(loadgen: Path, sock: Path, frame: Path, conns: int, seconds: float, pipeline: int = 1,
                mode: str = "frame") -> dict:
    out = subprocess.run([str(loadgen), str(sock), str(frame), str(conns), str(seconds), "0.5", str(pipeline), mode],
                         capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise SystemExit(f"loadgen failed: {out.stderr}")
    done, errors, secs, p50, p99 = out.stdout.split()
    if int(errors):
        raise SystemExit(f"loadgen saw {errors} error replies")
    return {"rps": int(done) / float(secs), "p50_us": float(p50), "p99_us": float(p99)}


def run_redis(tmp: Path, conns: int, seconds: float, rps_hint: float, pipeline: int = 1) -> dict:
    sock = tmp / "redis.sock"
    n = max(int(rps_hint * seconds), 20000)
    out = subprocess.run(
        ["redis-benchmark", "-s", str(sock), "-t", "get", "-c", str(conns), "-n", str(n), "-P", str(pipeline), "--csv"],
        capture_output=True, text=True, timeout=seconds * 10 + 60,
    )
    row = [r for r in out.stdout.splitlines() if r.startswith('"GET"')][-1]
    f = [float(x.strip('"')) for x in row.split(",")[1:]]
    # "rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    return {"rps": f[0], "p50_us": f[3] * 1000, "p99_us": f[5] * 1000, "n": n}


def _load_point(args, loadgen, sock, frame, resp, daemon, redis, tmp, conns: int, pipeline: int) -> str:
    """One row of the single-row table: interleaved daemon/Redis rounds (the same load generator
    for both, then redis-benchmark), medians; the spread of the per-round ratios says how noisy
    the machine was."""
    ds, rs, bs = [], [], []
    for _ in range(args.rounds):  # alternate, so noise from other processes hits both
        c0 = _cpu_seconds(daemon.pid)
        d = run_loadgen(loadgen, sock, frame, conns, args.seconds, pipeline)
        d["cpu_us"] = (_cpu_seconds(daemon.pid) - c0) / (d["rps"] * (args.seconds + 0.5)) * 1e6
        ds.append(d)
        if redis is not None:
            c0 = _cpu_seconds(redis.pid)
            rd = run_loadgen(loadgen, tmp / "redis.sock", resp, conns, args.seconds, pipeline, "resp")
            rd["cpu_us"] = (_cpu_seconds(redis.pid) - c0) / (rd["rps"] * (args.seconds + 0.5)) * 1e6
            rs.append(rd)
            if args.redis_benchmark:
                bs.append(run_redis(tmp, conns, args.seconds, ds[-1]["rps"] * 2, pipeline))
    d = {k: float(np.median([x[k] for x in ds])) for k in ds[0]}
    line = f"{conns:>7} {d['rps']:>13,.0f} {d['p50_us']:>7.1f} {d['p99_us']:>8.1f} {d['cpu_us']:>10.1f} | "
    if not rs:
        return line + "(redis not installed)"
    rd = {k: float(np.median([x[k] for x in rs])) for k in rs[0]}
    ratios = [a["rps"] / b["rps"] for a, b in zip(ds, rs)]
    line += (f"{rd['rps']:>12,.0f} {rd['p50_us']:>7.1f} {rd['p99_us']:>8.1f} {rd['cpu_us']:>10.1f} | "
             f"{d['rps'] / rd['rps']:>11.2f} {d['p99_us'] / rd['p99_us']:>9.2f} "
             f"{min(ratios):>5.2f}-{max(ratios):<5.2f}")
    if bs:
        b = {k: float(np.median([x[k] for x in bs])) for k in ("rps", "p99_us")}
        line += f" | {b['rps']:>12,.0f} {b['p99_us']:>8.1f} {d['rps'] / b['rps']:>6.2f}"
    return line


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), all its threads."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="measured seconds per load point and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved daemon/redis rounds per load point")
    ap.add_argument("--pipeline", type=int, default=16, help="depth of the pipelined single-row table")
    ap.add_argument("--dataset", default="cardio")
    ap.add_argument("--sections", default="single,pipelined,batch", help="comma-separated parts to run")
    ap.add_argument("--batch-repeats", type=int, default=0, help="calls per batch size (default: about 2 s each)")
    ap.add_argument("--batch-sizes", default="1000,100000", help="comma-separated rows per batch request")
    ap.add_argument("--shared-memory", action="store_true",
                    help="batch table: also time the same requests with the rows in a memfd (Client(shared_memory=1))")
    ap.add_argument("--daemon-args", default="", help="extra daemon options, e.g. --daemon-args=--no-fast-path")
    ap.add_argument("--no-redis-benchmark", dest="redis_benchmark", action="store_false",
                    help="drive Redis with the load generator only (skip the redis-benchmark columns)")
    args = ap.parse_args()

    X, name = load_dataset(args.dataset)
    info = pynomaly.build_info()
    print(f"# cpu: {cpu_model()}; pynomaly {info['version']} ({Path(pynomaly.__file__).parent})  simd={info['simd']}  "
          f"iforest_kernel={info.get('iforest_kernel')}  "
          f"openmp={info['openmp']}  cpus={os.cpu_count()}  dataset={name} {X.shape}  daemon args: {args.daemon_args!r}")
    model = pynomaly.IsolationForest(random_state=0).fit(X)

    tmp = Path(tempfile.mkdtemp(prefix="pynomaly-bench-"))
    redis = None
    daemon = None
    try:
        loadgen, frame = prepare(tmp, model, X)
        resp = tmp / "get.resp"
        resp.write_bytes(b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n")  # GET key, answered $3 xxx
        daemon = start_daemon(tmp, tmp / "models", args.daemon_args.split())
        sock = tmp / "daemon.sock"
        c = pynomaly.Client(str(sock))
        r = c.detect("bench", X[:1])
        assert np.array_equal(r.scores, model.decision_function(X[:1]))

        if shutil.which("redis-server") and shutil.which("redis-benchmark"):
            redis = subprocess.Popen(
                ["redis-server", "--port", "0", "--unixsocket", str(tmp / "redis.sock"), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for _ in range(100):
                if (tmp / "redis.sock").exists():
                    break
                time.sleep(0.05)
            for key in ("key", "key:__rand_int__"):  # the load generator's and redis-benchmark's
                subprocess.run(["redis-cli", "-s", str(tmp / "redis.sock"), "set", key, "xxx"], capture_output=True,
                               check=True)

        sections = set(args.sections.split(","))
        for pipeline, points in ((1, CONCURRENCY), (args.pipeline, (1, 8))):
            if ("single" if pipeline == 1 else "pipelined") not in sections:
                continue
            if pipeline == 1:
                print(f"\nsingle-row detect (want scores+labels), one request in flight per connection; "
                      f"{args.rounds} interleaved rounds of {args.seconds:g} s per side, medians")
            else:
                print(f"\npipelined: {pipeline} single-row requests in flight per connection on both sides "
                      f"(redis-benchmark -P {pipeline}); latency is per request, from its send")
            print("daemon and redis both driven by bench/loadgen.c (frames / RESP GET); ratio range: min-max of "
                  "the per-round req/s ratios" + ("; last columns: redis-benchmark -t get, and the daemon's "
                                                   "req/s against it" if args.redis_benchmark else ""))
            print(f"{'clients':>7} {'daemon req/s':>13} {'p50 us':>7} {'p99 us':>8} {'cpu us/req':>10} | "
                  f"{'redis GET/s':>12} {'p50 us':>7} {'p99 us':>8} {'cpu us/req':>10} | {'req/s ratio':>11} "
                  f"{'p99 ratio':>9} {'range':>11}" + (f" | {'r-bench GET/s':>12} {'p99 us':>8} {'ratio':>6}"
                                                       if args.redis_benchmark else ""))
            for conns in points:
                print(_load_point(args, loadgen, sock, frame, resp, daemon, redis, tmp, conns, pipeline), flush=True)

        # In-process single-row cost, the floor of the 1-client latency.
        one = X[:1]
        t = time.perf_counter()
        for _ in range(2000):
            model.decision_function(one)
        print(f"\nin-process decision_function of one row: {(time.perf_counter() - t) / 2000 * 1e6:.1f} us")

        if "batch" not in sections:
            return
        # The served model has n_jobs=None (one thread per call); the daemon splits large
        # requests across its workers. In-process is timed both ways, so the ratio that counts
        # (against in-process on every CPU, the daemon's share of the machine) is in the table.
        every = pynomaly.IsolationForest(random_state=0, n_jobs=-1).fit(X)
        shm = pynomaly.Client(str(sock), shared_memory=1) if args.shared_memory else None
        print("\nbatch detect (want scores) through pynomaly.Client vs in-process decision_function "
              "at n_jobs=1 and n_jobs=-1 (interleaved calls, medians)"
              + ("; 'shm': the same through Client(shared_memory=1), rows in a sealed memfd" if shm else ""))
        print(f"{'rows':>7} {'daemon rows/s':>14} {'in-proc 1 thr':>14} {'in-proc all':>12} "
              f"{'ratio vs 1 thr':>14} {'ratio vs all':>12}"
              + (f" {'shm rows/s':>12} {'shm vs 1 thr':>12} {'shm vs all':>10}" if shm else ""))
        rng = np.random.default_rng(0)
        for n in (int(v) for v in args.batch_sizes.split(",")):
            B = X[rng.integers(0, len(X), n)]
            same = c.detect("bench", B, want=["scores"]).scores
            assert np.array_equal(same, model.decision_function(B))
            assert np.array_equal(same, every.decision_function(B))
            fns = [lambda: model.decision_function(B), lambda: every.decision_function(B),
                   lambda: c.detect("bench", B, want=["scores"])]
            if shm:
                assert np.array_equal(shm.detect("bench", B, want=["scores"]).scores, same)
                fns.append(lambda: shm.detect("bench", B, want=["scores"]))
            reps = args.batch_repeats or max(7, int(1.5 / (n * 0.5e-6)))
            rates = _interleaved_rates(fns, reps)
            r_1, r_all, r_d = rates[:3]
            line = (f"{n:>7} {r_d * n:>14,.0f} {r_1 * n:>14,.0f} {r_all * n:>12,.0f} "
                    f"{r_d / r_1:>14.2f} {r_d / r_all:>12.2f}")
            if shm:
                r_s = rates[3]
                line += f" {r_s * n:>12,.0f} {r_s / r_1:>12.2f} {r_s / r_all:>10.2f}"
            print(line, flush=True)
        st = c.stats()
        print(f"\ndaemon: {st.native_calls} native calls for {st.rows_scored} rows; "
              f"{st.coalesced_requests} requests were coalesced")
        c.close()
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(10)
        if redis is not None:
            redis.terminate()
            redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _interleaved_rates(fns, reps: int):
    """Calls per second of each function, calling them in turn so that noise from other
    processes on the shared machine hits all alike; each rate from the median call time."""
    times = [[] for _ in fns]
    for _ in range(reps):
        for f, t in zip(fns, times):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [1.0 / float(np.median(t)) for t in times]


if __name__ == "__main__":
    main()
