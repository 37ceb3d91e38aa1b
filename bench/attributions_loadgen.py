"""The daemon's single-row req/s with attributions against without, driven by bench/loadgen.c (the C
client every daemon req/s figure in RESULTS.md uses), on the native path and the Python path:
the server's cost without the Python client's. Run from bench/: python attributions_loadgen.py
"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, ".")
import numpy as np
import pynomaly
from ab_daemon import start
from bench_daemon import _frame, _rows, load_dataset, prepare, run_loadgen
from pynomaly import wire

X, name = load_dataset("cardio")
tmp = Path(tempfile.mkdtemp(prefix="attr-"))
model = pynomaly.IsolationForest(n_estimators=100, random_state=0).fit(X)
loadgen, frame = prepare(tmp, model, X)
frames = {"plain": frame}
for m in ("path", "tree_shap"):
    f = tmp / f"{m}.bin"
    f.write_bytes(_frame(wire.Detect(1, "bench", None, ["scores", "labels", "attributions"], m, rows=_rows(X[:1]))))
    frames[m] = f
for args in ([], ["--no-fast-path"]):
    p, sock = start(sys.executable, tmp, tmp / "models", "d" + str(len(args)), args)
    for conns in (1, 8):
        res = {}
        for _ in range(3):
            for k, f in frames.items():
                res.setdefault(k, []).append(run_loadgen(loadgen, sock, f, conns, 2.0)["rps"])
        med = {k: float(np.median(v)) for k, v in res.items()}
        print(args or "native", conns, {k: f"{v:,.0f}" for k, v in med.items()},
              "path/plain %.2f tree_shap/plain %.2f" % (med["path"] / med["plain"], med["tree_shap"] / med["plain"]), flush=True)
    p.terminate(); p.wait()
