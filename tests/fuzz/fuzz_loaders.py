"""Coverage-guided fuzzing (atheris) of every pynomaly loader of outside bytes.

Each loader must return a model (or an array) or raise its documented error; any other
exception is a bug, and so is a crash or a hang. The first byte of an input picks the loader
(``TARGETS``, by index); the rest is the file. Loaders behind a checksum are also fed inputs
whose checksum is recomputed, as an attacker who writes a file can: otherwise mutations
would never get past it.

Run it longer than the CI smoke (tests/estimators/test_model_format_fuzz.py) with, e.g.::

    mkdir -p /tmp/found
    python tests/fuzz/fuzz_loaders.py /tmp/found tests/fuzz/corpus/loaders -max_total_time=1800 -timeout=20

(new inputs go to the first folder; copy the ones that found a bug into the corpus). A new
format joins by a function below and a line in ``TARGETS``, with seeds from make_corpus.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # two fuzzers on a small machine: one thread each

import atheris  # noqa: E402

import numpy as np  # noqa: E402

from pynomaly import IsolationForest, KNN, LOF, service  # noqa: E402
from pynomaly.estimators import _format, drift  # noqa: E402
from pynomaly.stream import HalfSpaceTrees, OnlineIsolationForest  # noqa: E402
from pynomaly._errors import ArtifactIntegrityError, InvalidInputError, ModelFormatError, NotFittedError  # noqa: E402
from pynomaly.service.transfer import artifact_format  # noqa: E402
from pynomaly.store._files import zstd  # noqa: E402
from pynomaly.store.dataio import array_from_npy, load_table  # noqa: E402
from pynomaly.store.exportfile import read_export  # noqa: E402


def _instrument() -> None:
    """Coverage of pynomaly's Python code. atheris.instrument_imports() does not see modules
    that an editable install's import hook loads, so every function already loaded is
    instrumented here instead (the optional adapters are imported first for that)."""
    import gc
    import importlib
    import types

    for name in ("pynomaly.adapters.torch", "pynomaly.adapters.jax"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and (getattr(obj, "__module__", None) or "").startswith("pynomaly"):
            atheris.instrument_func(obj)


_TMP = Path(tempfile.mkdtemp(prefix="pynomaly-fuzz-"))
_EXPORT_MAGIC = b"PYNOMALY-EXPORT\n"


def _with_crc(data: bytes) -> bytes:
    """``data`` with its last 4 bytes replaced by the CRC-32 of the rest (the model format's)."""
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4])) if len(data) >= 4 else data


def _exercise(model) -> None:
    """A loaded model must also score: whatever it was built from was accepted."""
    d = int(model.n_features_in_)
    if d > 4096:
        return
    X = np.linspace(-2.0, 2.0, 3 * d).reshape(3, d)
    if isinstance(model, LOF) and not model.novelty:
        return  # it scores only its training rows, by design
    scores = model.decision_function(X)
    assert scores.shape == (3,), scores.shape
    if isinstance(model, IsolationForest):  # explanations read the node arrays their own way
        for method in ("tree_shap", "path"):
            try:
                for output in ("path_length", "log2_score"):
                    e = model.explain(X, method=method, output=output)
                    assert e.values.shape == (3, d) and np.isfinite(e.values).all(), (method, output)
            except ModelFormatError:  # no tree, or leaf values that hide the node counts
                break
    if model.threshold_ is None:  # a forest written before its threshold was known: it scores only
        try:
            model.predict(X)
        except NotFittedError:
            return
        raise AssertionError("a model without a threshold labelled rows")
    model.predict(X)


def _native(cls, data: bytes) -> None:
    try:
        model = cls.from_bytes(data)
    except ModelFormatError:
        return
    _exercise(model)


def forest(data: bytes) -> None:
    _native(IsolationForest, data)


def forest_crc(data: bytes) -> None:
    _native(IsolationForest, _with_crc(data))


def lof_crc(data: bytes) -> None:
    _native(LOF, _with_crc(data))


def knn_crc(data: bytes) -> None:
    _native(KNN, _with_crc(data))


# Values a hostile header field takes: the edges of every integer type the readers convert to,
# and every JSON type.
_HOSTILE = [None, True, False, -1, 0, 1, 2, 3, 7, 2**31 - 1, 2**31, 2**32, 2**61, 2**62, 2**63 - 1, 2**63, 2**64,
            -(2**63), 0.5, 1.0, -0.0, float("inf"), float("nan"), 1e308, "", "3", "<f8", "auto", [], [1], {}, {"a": 1}]


def _field(fdp, sensible):
    """Mostly a sensible value, sometimes a hostile one."""
    return sensible if fdp.ConsumeIntInRange(0, 3) else fdp.PickValueInList(_HOSTILE)


def forest_built(data: bytes) -> None:
    """A forest file built field by field: header values and node arrays from the input, the
    arrays as long as the header says (when it says something small), the checksum right."""
    fdp = atheris.FuzzedDataProvider(data)
    n_trees, n_nodes, d = fdp.ConsumeIntInRange(1, 4), fdp.ConsumeIntInRange(1, 24), fdp.ConsumeIntInRange(1, 4)
    psi = fdp.ConsumeIntInRange(1, 64)
    params = {"n_estimators": _field(fdp, n_trees), "contamination": _field(fdp, 0.1), "n_jobs": _field(fdp, None)}
    if fdp.ConsumeBool():
        params[fdp.PickValueInList(["max_samples", "max_features", "random_state", "bogus"])] = _field(fdp, 1)
    header = {"params": params, "n_features": _field(fdp, d), "psi": _field(fdp, psi), "n_trees": _field(fdp, n_trees),
              "n_nodes": _field(fdp, n_nodes), "max_samples_": _field(fdp, psi), "threshold": _field(fdp, 0.5),
              "n_train_scores": _field(fdp, 0)}
    n_scores = header["n_train_scores"] if type(header["n_train_scores"]) is int and 0 <= header["n_train_scores"] <= 3 else 0
    cuts = sorted(fdp.ConsumeIntInRange(0, n_nodes) for _ in range(n_trees - 1))
    offsets = [0, *cuts, n_nodes] if fdp.ConsumeIntInRange(0, 7) else [fdp.ConsumeInt(4) for _ in range(n_trees + 1)]
    arrays = [
        np.asarray(offsets, dtype="<i4"),
        np.asarray([fdp.ConsumeIntInRange(-2, d + 1) for _ in range(n_nodes)], dtype="<i4"),
        np.asarray([fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat() for _ in range(n_nodes)],
                   dtype="<f4"),
        np.asarray([fdp.ConsumeIntInRange(-1, n_nodes + 1) for _ in range(n_nodes)], dtype="<i4"),
        np.asarray([fdp.ConsumeFloat() if fdp.ConsumeIntInRange(0, 7) == 0 else fdp.ConsumeFloatInRange(0, 20)
                    for _ in range(n_nodes)], dtype="<f8"),
        np.asarray([fdp.ConsumeFloat() for _ in range(n_scores)], dtype="<f8"),
    ]
    _native(IsolationForest, _format.pack(_format.KIND_IFOREST, header, [a.tobytes() for a in arrays]))


def neighbors_built(data: bytes) -> None:
    """A LOF or KNN file built field by field, as forest_built builds a forest."""
    fdp = atheris.FuzzedDataProvider(data)
    cls = LOF if fdp.ConsumeBool() else KNN
    n, d = fdp.ConsumeIntInRange(1, 8), fdp.ConsumeIntInRange(1, 3)
    dtype = fdp.PickValueInList(["<f4", "<f8"])
    params = {"n_neighbors": _field(fdp, fdp.ConsumeIntInRange(1, n)), "contamination": _field(fdp, 0.1),
              "metric": _field(fdp, fdp.PickValueInList(["euclidean", "sqeuclidean", "manhattan", "cosine"])),
              "algorithm": _field(fdp, fdp.PickValueInList(["auto", "brute", "kd_tree"])), "n_jobs": _field(fdp, None)}
    params["novelty" if cls is LOF else "method"] = _field(fdp, True if cls is LOF else "mean")
    header = {"params": params, "n_train": _field(fdp, n), "n_features": _field(fdp, d), "dtype": _field(fdp, dtype),
              "threshold": _field(fdp, 1.0), "algorithm": _field(fdp, "brute")}
    values = [fdp.ConsumeFloat() if fdp.ConsumeIntInRange(0, 7) == 0 else fdp.ConsumeFloatInRange(-5, 5)
              for _ in range(n * d)]
    rows = 3 if cls is LOF else 1
    parts = [np.asarray(values, dtype=dtype).tobytes(),
             np.asarray([fdp.ConsumeFloatInRange(0, 3) for _ in range(n * rows)], dtype="<f8").tobytes()]
    _native(cls, _format.pack(cls._kind, header, parts))


def _stream(cls, data: bytes) -> None:
    """A streaming detector's snapshot: loaded, it must score, learn and snapshot again."""
    try:
        model = cls.from_bytes(data)
    except ModelFormatError:
        return
    d = model.n_features_in_
    if d is None or d > 4096:
        return
    X = np.linspace(-2.0, 2.0, 3 * d).reshape(3, d)
    assert model.score_learn_many(X).shape == (3,)
    assert model.score_many(X).shape == (3,)
    type(model).from_bytes(model.to_bytes())


def stream_hst_crc(data: bytes) -> None:
    _stream(HalfSpaceTrees, _with_crc(data))


def stream_oif_crc(data: bytes) -> None:
    _stream(OnlineIsolationForest, _with_crc(data))


def _file(data: bytes, suffix: str) -> Path:
    path = _TMP / f"input{suffix}"
    path.write_bytes(data)
    return path


def model_file(data: bytes) -> None:
    """What a daemon's model folder holds: a bare model file or an export, either one."""
    try:
        scorer = service.load_file_for_scoring(_file(data, ".model"), "fuzz", 1)
    except (ArtifactIntegrityError, InvalidInputError):  # InvalidInputError: e.g. a module is needed
        return
    _exercise(scorer.model)


def export(data: bytes) -> None:
    """An export file whose trailing SHA-256 is recomputed, read as ``pynomaly import`` does."""
    body = data if data.startswith(_EXPORT_MAGIC) else _EXPORT_MAGIC + data
    try:
        read_export(_file(body + hashlib.sha256(body).digest(), ".export"), format_of=artifact_format)
    except ArtifactIntegrityError:
        pass


def export_built(data: bytes) -> None:
    """A well-framed export around fuzzed content: input = JSON header, NUL, artifact. The
    artifact's hash, size and the file's checksum are made right, so the model loaders behind
    an export are reached."""
    head, _, artifact = data.partition(b"\0")
    try:
        header = json.loads(head)
    except (ValueError, RecursionError):
        header = None
    if isinstance(header, dict):
        header["artifact_sha256"] = hashlib.sha256(artifact).hexdigest()
        if isinstance(header.get("version"), dict):
            header["version"]["size"] = len(artifact)
        head = json.dumps(header).encode()
    body = _EXPORT_MAGIC + struct.pack("<IQ", 1, len(head)) + head + zstd().ZstdCompressor().compress(artifact)
    model_file(body + hashlib.sha256(body).digest())


def npy_bytes(data: bytes) -> None:
    """A stored dataset's rows (service.dataset_rows reads them with array_from_npy)."""
    try:
        X = array_from_npy(data, "fuzz")
    except InvalidInputError:
        return
    assert X.ndim == 2 and X.dtype.kind in "biuf"


def _table(data: bytes, suffix: str) -> None:
    try:
        X, names = load_table(_file(data, suffix))
    except InvalidInputError:
        return
    assert X.ndim == 2 and X.dtype == np.float64 and len(names) == X.shape[1] and np.isfinite(X).all()


def table_npy(data: bytes) -> None:
    _table(data, ".npy")


def table_npz(data: bytes) -> None:
    _table(data, ".npz")


def table_csv(data: bytes) -> None:
    _table(data, ".csv")


def table_parquet(data: bytes) -> None:
    _table(data, ".parquet")


def drift_profile(data: bytes) -> None:
    """A version's stored drift reference (service.drift reads it with Profile.from_bytes)."""
    try:
        profile = drift.Profile.from_bytes(data)
    except ModelFormatError:
        return
    if profile.n_features > 64:
        return
    X = np.linspace(-3.0, 3.0, 4 * profile.n_features).reshape(4, profile.n_features)
    counts = drift.count(profile, X, X[:, 0])
    drift.compare(profile, drift.Counts.from_bytes(counts.to_bytes(), profile))


def drift_counts(data: bytes) -> None:
    """A bucket of live drift counts as the home stores it, read against a small profile."""
    profile = drift.reference_profile(np.arange(12.0).reshape(6, 2), scores=np.arange(6.0), threshold=3.0, bins=3)
    try:
        counts = drift.Counts.from_bytes(data, profile)
    except ModelFormatError:
        return
    if counts.rows > 0:
        drift.compare(profile, counts)


# Index = the first byte of an input (modulo the length): append new formats, never reorder,
# or the corpus's seeds would feed the wrong loader.
TARGETS = [forest, forest_crc, lof_crc, knn_crc, model_file, export, export_built, npy_bytes,
           table_npy, table_npz, table_csv, table_parquet, forest_built, neighbors_built, drift_profile,
           drift_counts, stream_hst_crc, stream_oif_crc]


def one_input(data: bytes) -> None:
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


def main() -> None:
    _instrument()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
