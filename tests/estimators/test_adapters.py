"""PyOD, PyTorch and JAX detectors behind the same contract, the registry, lazy imports and
the errors for missing extras. torch and JAX are trained for real (small, on CPU)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

import pynomaly
from pynomaly.estimators import registry
from pynomaly._errors import InvalidInputError, ModelFormatError
from pynomaly.estimators.adapters import MissingExtraError

from conftest import load_dataset, roc_auc


# -- lazy imports and missing extras -----------------------------------------------------------
def test_import_pynomaly_imports_no_optional_library():
    code = (
        "import sys, pynomaly, pynomaly.domain, pynomaly.registry, pynomaly.service, pynomaly.repository,"
        " pynomaly.cli, pynomaly.dataio, pynomaly.adapters.pyod, pynomaly.adapters.torch, pynomaly.adapters.jax,"
        " pynomaly.jobs, pynomaly.alerts, pynomaly.metrics\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jax', 'jaxlib', 'pyod', 'sklearn', 'pyarrow',"
        " 'prometheus_client'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "module, name, extra",
    [("torch", "TorchAutoEncoder", "torch"), ("jax", "JaxDeepSVDD", "jax"), ("pyod", "pyod.ECOD", "pyod")],
)
def test_missing_extra_names_it(monkeypatch, module, name, extra):
    for m in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingExtraError, match=rf"pip install 'pynomaly\[{extra}\]'") as e:
        registry.create(name)
    assert isinstance(e.value, ImportError) and isinstance(e.value, pynomaly.PynomalyError)


# -- the registry ------------------------------------------------------------------------------
def test_registry_names_and_errors():
    assert registry.get("IsolationForest") is pynomaly.IsolationForest
    assert "IsolationForest" in registry.names() and "pyod.<ClassName>" in registry.names()
    assert registry.kind("pyod.ECOD") == "pyod" and registry.kind("TorchAutoEncoder") == "torch"
    with pytest.raises(InvalidInputError, match="unknown algorithm 'Nope'.*IsolationForest"):
        registry.get("Nope")
    with pytest.raises(InvalidInputError, match="no parameter"):
        registry.create("IsolationForest", n_trees=3)
    m = registry.create("IsolationForest", n_estimators=7)
    assert isinstance(m, pynomaly.IsolationForest) and m.n_estimators == 7


def test_registry_knows_neighbors_when_present():
    try:
        import pynomaly.estimators.neighbors  # noqa: F401  (written in parallel; merged later)
    except ImportError:
        with pytest.raises(InvalidInputError, match="not available"):
            registry.get("LOF")
        assert "LOF" not in registry.names()
    else:
        assert registry.get("LOF").__name__ == "LOF" and "KNN" in registry.names()


# -- PyOD ----------------------------------------------------------------------------------------
def test_pyod_detector_matches_pyod():
    pytest.importorskip("pyod")
    from pyod.models.ecod import ECOD

    X, y = load_dataset("cardio")
    ours = registry.create("pyod.ECOD", contamination=0.05).fit(X)
    theirs = ECOD(contamination=0.05).fit(X)
    np.testing.assert_allclose(ours.decision_scores_, theirs.decision_scores_)
    np.testing.assert_allclose(ours.decision_function(X[:50]), theirs.decision_function(X[:50]))
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X, "unify"), theirs.predict_proba(X, method="unify"), atol=1e-12)


def test_pyod_unknown_class_and_bad_params():
    pytest.importorskip("pyod")
    with pytest.raises(InvalidInputError, match="no detector class 'NoSuch'"):
        registry.create("pyod.NoSuch")
    with pytest.raises(InvalidInputError, match="not a PyOD class name"):
        registry.create("pyod.os.system")
    with pytest.raises(InvalidInputError, match="bad parameters"):
        registry.create("pyod.ECOD", n_trees=3).fit(np.random.default_rng(0).random((50, 3)))
    with pytest.raises(InvalidInputError, match="only available for PyOD's IForest"):
        registry.create("pyod.ECOD", use_native=True).fit(np.random.default_rng(0).random((50, 3)))


def test_pyod_iforest_scored_by_native_forest():
    pytest.importorskip("pyod")
    from pyod.models.iforest import IForest

    X, _ = load_dataset("thyroid")
    ours = registry.create("pyod.IForest", use_native=True, random_state=3).fit(X)
    theirs = IForest(random_state=3).fit(X)
    assert isinstance(ours.native_, pynomaly.IsolationForest)
    offset = theirs.detector_.offset_
    np.testing.assert_allclose(ours.decision_function(X), theirs.decision_function(X) - offset, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)


# -- PyTorch -------------------------------------------------------------------------------------
def test_torch_autoencoder_on_real_data():
    pytest.importorskip("torch")
    X, y = load_dataset("thyroid")
    m = registry.create("TorchAutoEncoder", epochs=10, random_state=0).fit(X)
    assert roc_auc(y, m.decision_scores_) > 0.85
    np.testing.assert_allclose(m.decision_function(X), m.decision_scores_, rtol=1e-6)
    assert m.predict(X).sum() == m.labels_.sum()
    p = m.predict_proba(X[:20])
    assert p.shape == (20, 2) and np.allclose(p.sum(axis=1), 1.0)
    again = pynomaly.adapters.torch.TorchAutoEncoder.from_bytes(m.to_bytes())
    np.testing.assert_array_equal(again.decision_function(X), m.decision_function(X))
    assert again.get_params() == m.get_params()


def test_torch_same_seed_same_model():
    pytest.importorskip("torch")
    X, _ = load_dataset("breastw")
    a = registry.create("TorchAutoEncoder", epochs=2, random_state=5).fit(X)
    b = registry.create("TorchAutoEncoder", epochs=2, random_state=5).fit(X)
    np.testing.assert_array_equal(a.decision_scores_, b.decision_scores_)


def test_torch_wraps_a_user_module():
    torch = pytest.importorskip("torch")
    X, y = load_dataset("breastw")

    def net():
        return torch.nn.Sequential(torch.nn.Linear(9, 3), torch.nn.Tanh(), torch.nn.Linear(3, 9))

    user = net()
    before = {k: v.clone() for k, v in user.state_dict().items()}
    m = registry.get("TorchAutoEncoder")(module=user, epochs=15, random_state=0).fit(X)
    assert roc_auc(y, m.decision_scores_) > 0.8
    assert all(torch.equal(before[k], v) for k, v in user.state_dict().items())  # a copy was trained
    blob = m.to_bytes()
    cls = registry.get("TorchAutoEncoder")
    with pytest.raises(InvalidInputError, match="module="):
        cls.from_bytes(blob)
    again = cls.from_bytes(blob, module=net())
    np.testing.assert_array_equal(again.decision_function(X), m.decision_function(X))
    with pytest.raises(InvalidInputError, match="weights do not fit"):
        cls.from_bytes(blob, module=torch.nn.Sequential(torch.nn.Linear(9, 9)))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_torch_loading_never_runs_pickled_code(capsys):
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"format": "pynomaly.torch/1", "header": "{}", "x": _Evil()}, buf)
    with pytest.raises(ModelFormatError):
        registry.get("TorchAutoEncoder").from_bytes(buf.getvalue())
    assert "pwned" not in capsys.readouterr().out
    with pytest.raises(ModelFormatError):
        registry.get("TorchAutoEncoder").from_bytes(b"garbage")


def test_torch_bad_parameters():
    pytest.importorskip("torch")
    X = np.random.default_rng(0).random((40, 3))
    for bad in ({"epochs": 0}, {"batch_size": 1.5}, {"learning_rate": -1}, {"hidden_neurons": ()}, {"device": "nonsense"}):
        with pytest.raises(InvalidInputError):
            registry.create("TorchAutoEncoder", **bad).fit(X)
    with pytest.raises(pynomaly.NotFittedError):
        registry.create("TorchAutoEncoder").decision_function(X)


# -- JAX -----------------------------------------------------------------------------------------
def test_jax_deep_svdd_on_real_data():
    pytest.importorskip("jax")
    X, y = load_dataset("breastw")
    m = registry.create("JaxDeepSVDD", epochs=20, random_state=0).fit(X)
    assert roc_auc(y, m.decision_scores_) > 0.85
    np.testing.assert_allclose(m.decision_function(X), m.decision_scores_, rtol=1e-5)
    p = m.predict_proba(X[:20])
    assert p.shape == (20, 2) and np.allclose(p.sum(axis=1), 1.0)
    again = registry.get("JaxDeepSVDD").from_bytes(m.to_bytes())
    np.testing.assert_array_equal(again.decision_function(X), m.decision_function(X))
    assert again.get_params() == m.get_params()
    with pytest.raises(InvalidInputError, match="features"):
        m.decision_function(X[:, :3])


def test_jax_wraps_a_user_function():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    X, y = load_dataset("breastw")

    def apply_fn(params, x):
        return jnp.tanh(x @ params["w1"]) @ params["w2"]

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    init = {"w1": jax.random.normal(k1, (9, 8)) * 0.3, "w2": jax.random.normal(k2, (8, 4)) * 0.3}
    cls = registry.get("JaxDeepSVDD")
    m = cls(apply_fn=apply_fn, init_params=init, epochs=20, random_state=0).fit(X)
    assert roc_auc(y, m.decision_scores_) > 0.8
    blob = m.to_bytes()
    with pytest.raises(InvalidInputError, match="apply_fn"):
        cls.from_bytes(blob)
    again = cls.from_bytes(blob, apply_fn=apply_fn, init_params=init)
    np.testing.assert_array_equal(again.decision_function(X), m.decision_function(X))
    with pytest.raises(InvalidInputError, match="needs init_params"):
        cls(apply_fn=apply_fn, epochs=1).fit(X)


def test_jax_artifact_is_checked():
    pytest.importorskip("jax")
    with pytest.raises(ModelFormatError):
        registry.get("JaxDeepSVDD").from_bytes(b"not an npz")
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(b'{"format": "other"}', dtype=np.uint8))
    with pytest.raises(ModelFormatError, match="not a pynomaly JAX artifact"):
        registry.get("JaxDeepSVDD").from_bytes(buf.getvalue())


# -- predict_proba on the native forest (base class) --------------------------------------------------
def test_predict_proba_linear_and_unify():
    X, _ = load_dataset("cardio")
    m = pynomaly.IsolationForest(random_state=0).fit(X)
    p = m.predict_proba(X)
    s, t = m.decision_function(X), m.decision_scores_
    np.testing.assert_allclose(p[:, 1], np.clip((s - t.min()) / (t.max() - t.min()), 0, 1))
    from scipy.special import erf

    u = m.predict_proba(X, method="unify")
    np.testing.assert_allclose(u[:, 1], np.clip(erf((s - t.mean()) / (t.std() * np.sqrt(2))), 0, 1), atol=1e-12)
    with pytest.raises(InvalidInputError, match="linear"):
        m.predict_proba(X, method="softmax")


def test_torch_autoencoder_on_cuda_when_present():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (the autoencoder runs on CPU here)")
    X, y = load_dataset("thyroid")
    m = registry.create("TorchAutoEncoder", epochs=10, random_state=0).fit(X)  # device=None picks CUDA
    assert m.device_.startswith("cuda")
    assert roc_auc(y, m.decision_scores_) > 0.85
    blob = m.to_bytes()
    cls = registry.get("TorchAutoEncoder")
    np.testing.assert_array_equal(cls.from_bytes(blob).decision_function(X), m.decision_function(X))
    on_cpu = cls.from_bytes(blob, device="cpu")
    assert on_cpu.device_ == "cpu"
    np.testing.assert_allclose(on_cpu.decision_function(X), m.decision_function(X), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, module, kw", [
    ("TorchAutoEncoder", "torch", {"epochs": 2}),
    ("JaxDeepSVDD", "jax", {"epochs": 2}),
    ("pyod.ECOD", "pyod", {}),
])
def test_adapters_take_columns_by_name_and_keep_the_names(name, module, kw):
    pytest.importorskip(module)
    pd = pytest.importorskip("pandas")
    X, _ = load_dataset("breastw")
    cols = [f"c{i}" for i in range(X.shape[1])]
    df = pd.DataFrame(X, columns=cols)
    m = registry.create(name, random_state=0, **kw).fit(df) if module != "pyod" else registry.create(name).fit(df)
    assert list(m.feature_names_in_) == cols
    want = m.decision_function(X)
    np.testing.assert_allclose(m.decision_function(df[cols[::-1]]), want, rtol=1e-6)
    with pytest.raises(InvalidInputError, match=r"missing \['c0'\]"):
        m.decision_function(df[cols[1:]])
    again = registry.get(name).from_bytes(m.to_bytes())
    assert list(again.feature_names_in_) == cols
    np.testing.assert_allclose(again.decision_function(df[cols[::-1]]), want, rtol=1e-6)
