"""Writes the seed corpus of tests/fuzz/fuzz_loaders.py: one small valid input of each format,
each prefixed with the byte that picks its loader. Run from the repository root::

    python tests/fuzz/make_corpus.py            # into tests/fuzz/corpus/loaders/

Seeds are named ``seed-<loader>-<what>``; inputs that once found a bug are ``crash-<what>``
(kept by hand, never rewritten here). Torch and JAX seeds are written where those are installed.
The native harness's seeds (cpp/tests/fuzz_model_loaders.cpp, its input layout) go to
tests/fuzz/corpus/native/.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_loaders import TARGETS  # noqa: E402

from pynomaly import IsolationForest, KNN, LOF, service  # noqa: E402

OUT = Path(__file__).parent / "corpus" / "loaders"
NATIVE = Path(__file__).parent / "corpus" / "native"


def _seed(loader, what: str, data: bytes) -> None:
    (OUT / f"seed-{loader.__name__}-{what}").write_bytes(bytes([TARGETS.index(loader)]) + data)


def _export(model, algorithm: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return service.export_model(model, Path(d) / "e", "fuzz", algorithm).read_bytes()


def _npy(X) -> bytes:
    buf = io.BytesIO()
    np.save(buf, X, allow_pickle=False)
    return buf.getvalue()


def _native_seeds(forest: IsolationForest, X) -> None:
    """Inputs of cpp/tests/fuzz_model_loaders.cpp: a real forest's arrays, and searches."""
    import struct

    NATIVE.mkdir(parents=True, exist_ok=True)
    a = forest._forest.arrays()
    n_trees, n_nodes, d = len(a["tree_offset"]) - 1, len(a["feature"]), X.shape[1]
    head = struct.pack("<BqqBH", 0, d, forest.max_samples_, n_trees - 1, n_nodes - 1)
    body = b"".join(a[k].astype(t).tobytes() for k, t in (("tree_offset", "<i4"), ("feature", "<i4"),
                    ("threshold", "<f4"), ("left", "<i4"), ("leaf_value", "<f8")))
    (NATIVE / "seed-forest").write_bytes(head + body + X[:3].astype("<f8").tobytes())
    for metric in range(4):
        for algorithm in range(3):
            flags = (metric + algorithm) % 4  # float32 or not, queries or a self-join
            head = struct.pack("<BHBqBBBB", 1, 11, d - 1, 3, metric, algorithm, flags, 2)
            rows = X[:15].astype("<f4" if flags & 1 else "<f8").tobytes()
            (NATIVE / f"seed-knn-{metric}-{algorithm}").write_bytes(head + rows)


def _drift_seeds(f, X) -> None:
    from pynomaly.estimators import drift

    _seed(f.drift_profile, "features", drift.reference_profile(X, bins=4).to_bytes())
    small = drift.reference_profile(X[:6], ["a", "b"], X[:6, 0], 0.0, bins=3)
    _seed(f.drift_profile, "with-score", small.to_bytes())
    counted = drift.reference_profile(np.arange(12.0).reshape(6, 2), scores=np.arange(6.0), threshold=3.0, bins=3)
    Y = np.arange(8.0).reshape(4, 2)
    _seed(f.drift_counts, "four-rows", drift.count(counted, Y, Y[:, 0]).to_bytes())


def main() -> None:
    import fuzz_loaders as f

    OUT.mkdir(parents=True, exist_ok=True)
    X = np.random.default_rng(0).normal(size=(12, 2)).round(2)
    models = {
        "IsolationForest": IsolationForest(n_estimators=2, max_samples=4, random_state=0).fit(X),
        "LOF": LOF(n_neighbors=2, novelty=True).fit(X[:5]),
        "KNN": KNN(n_neighbors=2).fit(X[:5]),
    }
    try:
        from pynomaly.estimators.adapters.torch import TorchAutoEncoder

        models["TorchAutoEncoder"] = TorchAutoEncoder(hidden_neurons=(1,), epochs=1, random_state=0).fit(X)
    except ImportError:
        pass
    try:
        from pynomaly.estimators.adapters.jax import JaxDeepSVDD

        models["JaxDeepSVDD"] = JaxDeepSVDD(hidden_neurons=(1,), epochs=1, random_state=0).fit(X)
    except ImportError:
        pass
    raw = {name: m.to_bytes() for name, m in models.items()}
    _native_seeds(models["IsolationForest"], X)
    _seed(f.forest, "valid", raw["IsolationForest"])
    _seed(f.forest_crc, "valid", raw["IsolationForest"])
    _seed(f.lof_crc, "valid", raw["LOF"])
    _seed(f.knn_crc, "valid", raw["KNN"])
    for name in ("IsolationForest", "LOF", "KNN"):
        _seed(f.model_file, name, raw[name])
    for name, m in models.items():
        exp = _export(m, name)
        _seed(f.model_file, f"export-{name}", exp)
        body = exp[:-32]
        _seed(f.export, name, body)
        header_len = int.from_bytes(body[20:28], "little")
        header = json.loads(body[28 : 28 + header_len])
        _seed(f.export_built, name, json.dumps(header).encode() + b"\0" + raw[name])
    _seed(f.npy_bytes, "float64", _npy(X[:3]))
    _seed(f.npy_bytes, "int8-fortran", _npy(np.asfortranarray(X[:3].astype(np.int8))))
    _seed(f.table_npy, "float32", _npy(X[:3].astype(np.float32)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("X.npy", _npy(X[:3]))
    _seed(f.table_npz, "deflated", buf.getvalue())
    _seed(f.table_csv, "header", b"a,b\n1,2\n3.5,-4e3\n,7\n")
    _seed(f.table_csv, "semicolons", b"1;2;3\n4;5;6\n")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3, 4]}), buf)
        _seed(f.table_parquet, "two-columns", buf.getvalue())
    except ImportError:
        pass
    _drift_seeds(f, X)
    for i in range(4):  # field-by-field builders: any bytes make an input
        _seed(f.forest_built, str(i), np.random.default_rng(i).bytes(200))
        _seed(f.neighbors_built, str(i), np.random.default_rng(i).bytes(200))
    stream_seeds()
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(list(OUT.iterdir()))} files, {total} bytes in {OUT}")


def stream_seeds() -> None:
    """Streaming detectors' snapshots (issue 23): unstarted, within the first window, past it."""
    import fuzz_loaders as f
    from pynomaly.stream import HalfSpaceTrees, OnlineIsolationForest

    X = np.random.default_rng(1).uniform(size=(40, 2)).round(2)
    for cls, loader in ((HalfSpaceTrees, f.stream_hst_crc), (OnlineIsolationForest, f.stream_oif_crc)):
        small = dict(n_trees=2, window_size=8, seed=0)
        small.update(height=2) if cls is HalfSpaceTrees else small.update(max_leaf_samples=2)
        _seed(loader, "unstarted", cls(**small).to_bytes())
        for n in (3, 40):
            m = cls(**small)
            m.learn_many(X[:n])
            _seed(loader, f"after-{n}", m.to_bytes())


if __name__ == "__main__":
    main()
