"""deploy/: the container file and the Kubernetes manifests stay true to the code.

No container engine or cluster runs here, so the files are checked the ways that can fail
without one: every manifest is parsed (duplicate keys refused) and checked field by field
against the Kubernetes API's own models (the ``kubernetes`` client's OpenAPI types: a
misspelt or misplaced field fails), the commands they run are parsed by our real argument
parsers, ports, probes, selectors, Secrets and the autoscaler's target agree with each
other, and the API is started with the manifest's own arguments and its probes asked.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML parses the manifests (pip install pyyaml)")

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
sys.path.insert(0, str(Path(__file__).parent))
from _http_helpers import free_port  # noqa: E402


class _StrictLoader(yaml.SafeLoader):
    """A loader that refuses a key given twice in one mapping (PyYAML keeps the last silently,
    and a second ``volumeMounts`` would drop the first without a word)."""


def _no_duplicates(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dup)}", node.start_mark)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _docs(path: Path) -> list:
    return [d for d in yaml.load_all(path.read_text(), Loader=_StrictLoader) if d is not None]


def _objects() -> list:
    return [(p.name, d) for p in MANIFESTS if p.name != "kustomization.yaml" for d in _docs(p)]


def _of_kind(kind: str) -> list:
    return [d for _, d in _objects() if d["kind"] == kind]


def _containers() -> list:
    return [c for d in _of_kind("Deployment") for c in d["spec"]["template"]["spec"]["containers"]]


def test_manifests_exist_and_parse():
    names = {p.name for p in MANIFESTS}
    assert {"api.yaml", "hpa.yaml", "worker.yaml", "kustomization.yaml", "secrets.example.yaml"} <= names
    kinds = {d["kind"] for _, d in _objects()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret", "PodDisruptionBudget"} <= kinds


def test_duplicate_keys_are_refused():
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate"):
        yaml.load("a: 1\nb: 2\na: 3\n", Loader=_StrictLoader)


# -- every field checked against the Kubernetes API's models --------------------------------
_MODEL_OF = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "Secret"): "V1Secret",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
}
_PRIMITIVES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "object": (object,),
               "datetime": (str,), "date": (str,)}


def _unknown_fields(client, value, type_name: str, where: str) -> list:
    """Paths of fields that the model ``type_name`` has no place for, or of the wrong type."""
    # Container types are spelt "List[X]" / "Dict[str, X]" (older clients: "list[X]", "dict(str, X)").
    if type_name[:5].lower() == "list[":
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, v in enumerate(value) for e in _unknown_fields(client, v, type_name[5:-1], f"{where}[{i}]")]
    if type_name[:5].lower() in ("dict(", "dict["):
        inner = type_name[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [e for k, v in value.items() for e in _unknown_fields(client, v, inner, f"{where}.{k}")]
    if type_name in _PRIMITIVES:
        if type_name != "bool" and isinstance(value, bool) or not isinstance(value, _PRIMITIVES[type_name]):
            return [f"{where}: expected {type_name}, got {type(value).__name__}"]
        return []
    model = getattr(client, type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping"]
    by_json = {j: a for a, j in model.attribute_map.items()}
    errors = []
    for key, v in value.items():
        if key not in by_json:
            errors.append(f"{where}.{key}: no such field in {type_name}")
        else:
            errors += _unknown_fields(client, v, model.openapi_types[by_json[key]], f"{where}.{key}")
    return errors


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_field_is_one_the_kubernetes_api_has(path):
    k8s = pytest.importorskip("kubernetes.client", reason="the kubernetes client carries the API's models")
    if path.name == "kustomization.yaml":
        (doc,) = _docs(path)
        assert doc["kind"] == "Kustomization"
        for res in doc["resources"]:
            assert (path.parent / res).is_file(), f"kustomization lists {res}, which is not there"
        return
    api = k8s.ApiClient()
    for doc in _docs(path):
        model = _MODEL_OF.get((doc.get("apiVersion"), doc.get("kind")))
        assert model, f"{path.name}: unexpected {doc.get('apiVersion')} {doc.get('kind')}"
        assert _unknown_fields(k8s, doc, model, f"{path.name}:{doc['kind']}") == []
        # The models' constructors refuse a missing required field (containers' name, a
        # port's number, a metric's type ...).
        api._ApiClient__deserialize(doc, model)


def test_the_schema_check_catches_a_misspelt_field():
    k8s = pytest.importorskip("kubernetes.client", reason="the kubernetes client carries the API's models")
    (deployment,) = [d for d in _docs(DEPLOY / "kubernetes" / "api.yaml") if d["kind"] == "Deployment"]
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    c["readynessProbe"] = c.pop("readinessProbe")
    c["ports"][0]["containerPort"] = "8000"
    errors = _unknown_fields(k8s, deployment, "V1Deployment", "api")
    assert any("readynessProbe: no such field" in e for e in errors), errors
    assert any("containerPort: expected int" in e for e in errors), errors


# -- commands: parsed by the real parsers ----------------------------------------------------
def _parse_command(argv: list):
    """The namespace our own parser makes of ``pynomaly ARGS`` (SystemExit on a bad option)."""
    assert argv[0] == "pynomaly", f"containers run the pynomaly command, not {argv[0]!r}"
    face = argv[1]
    if face == "api":
        from pynomaly_api.cli import build_parser

        return build_parser().parse_args(argv[2:])
    if face == "serve":
        from pynomaly_daemon.config import build_parser

        return build_parser().parse_args(argv[2:])
    from pynomaly.cli import _parse

    return _parse(argv[1:])


@pytest.mark.parametrize("container", _containers(), ids=lambda c: c["name"])
def test_containers_run_real_commands(container):
    args = _parse_command(container["command"] + container["args"])
    if container["args"][0] == "api":
        (port,) = container["ports"]
        assert args.port == port["containerPort"], "the server listens where the container port says"
        assert args.host == "0.0.0.0", "a pod's server must listen on all its addresses"
        assert args.job_workers == 0, "jobs run in the worker Deployment"
        for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
            get = container[probe]["httpGet"]
            assert get["path"] == path
            assert get["port"] in (port["name"], port["containerPort"])
    else:
        assert args.command == "worker"
    env = {e["name"] for e in container["env"]}
    assert {"PYNOMALY_HOME", "PYNOMALY_CONFIG_DIR"} <= env
    # The requests the autoscaler's utilisation is a share of.
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_the_bad_option_check_can_fail():
    with pytest.raises(SystemExit):
        _parse_command(["pynomaly", "api", "--prot", "8000"])


def test_environment_variables_are_ones_the_code_reads():
    sources = "".join(p.read_text() for d in ("python/pynomaly", "api/pynomaly_api") for p in (REPO / d).rglob("*.py"))
    for c in _containers():
        for e in c["env"]:
            assert f'"{e["name"]}"' in sources, f"{e['name']} is set for {c['name']} but nothing reads it"


def test_services_autoscaler_and_secrets_point_at_what_exists():
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    for svc in _of_kind("Service"):
        matches = [d for d in deployments.values()
                   if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert matches, f"Service {svc['metadata']['name']} selects no Deployment's pods"
        names = {p["name"] for c in matches[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in names
    for d in deployments.values():
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] in deployments
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert hpa["spec"]["minReplicas"] >= 2, "one replica is not a highly available API"
    secrets = {s["metadata"]["name"]: s["stringData"] for s in _of_kind("Secret")}
    for d in deployments.values():
        spec = d["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets
        for c in spec["containers"]:
            for e in c["env"]:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]
            mounted = {m["name"] for m in c["volumeMounts"]}
            assert mounted <= {v["name"] for v in spec["volumes"]}
    # The files the servers read from PYNOMALY_CONFIG_DIR are the ones the Secret provides.
    from pynomaly_api.tokens import KEYS_FILE

    assert {KEYS_FILE, "secret.key"} <= set(secrets["pynomaly-config"])


# -- the container file ----------------------------------------------------------------------
def _instructions() -> list:
    """(INSTRUCTION, argument text) of deploy/Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _json_form(text: str) -> list:
    import json

    value = json.loads(text)
    assert isinstance(value, list), f"{text!r}: use the JSON (exec) form, so signals reach the server"
    return value


def test_containerfile_builds_from_real_files_and_runs_real_commands():
    ins = _instructions()
    assert [w for w, _ in ins].count("FROM") == 2, "a build stage and a runtime stage"
    for word, rest in ins:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for s in sources:
                assert (REPO / s).exists(), f"COPY {s}: not in the repository"
                assert s not in (REPO / ".dockerignore").read_text().split(), f"COPY {s} is excluded by .dockerignore"
    (entry,) = [_json_form(r) for w, r in ins if w == "ENTRYPOINT"]
    (cmd,) = [_json_form(r) for w, r in ins if w == "CMD"]
    args = _parse_command(entry + cmd)
    (expose,) = [r for w, r in ins if w == "EXPOSE"]
    assert int(expose) == args.port
    (health,) = [r for w, r in ins if w == "HEALTHCHECK"]
    assert f"127.0.0.1:{args.port}/v2/health/ready" in health
    (user,) = [r for w, r in ins if w == "USER"]
    assert user not in ("0", "root")
    # The extras it installs are ones pyproject.toml defines.
    checked = []
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for word, rest in ins:
        for found in re.findall(r'(?:pynomaly|\.whl\))\[([a-z,]+)\]', rest):
            checked.append(found)
            assert set(found.split(",")) <= set(extras), found
    assert checked == ["http,postgres"], checked
    # And the Deployment runs the image's command with the same port.
    (api,) = [c for c in _containers() if c["args"][0] == "api"]
    assert api["command"] == entry and api["ports"][0]["containerPort"] == args.port


# -- the manifest's own command, started for real ----------------------------------------------
def _start(argv: list, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "pynomaly", *argv[1:]], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _get(port: int, path: str, token=None) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture(params=["folder", "postgresql"])
def deployed_home(request, tmp_path):
    """The home a replica runs on: a folder, or (as deploy/ runs them) a PostgreSQL database."""
    if request.param == "folder":
        return str(tmp_path / "home")
    return request.getfixturevalue("pg_home")


def test_the_api_deployment_command_serves_its_probes(tmp_path, deployed_home):
    pytest.importorskip("uvicorn", reason="the HTTP extra is not installed")
    (api,) = [c for c in _containers() if c["args"][0] == "api"]
    argv = api["command"] + api["args"]
    port = free_port()
    # The manifest's arguments, but on loopback and a free port of this machine.
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    env = dict(os.environ, PYNOMALY_HOME=deployed_home, PYNOMALY_CONFIG_DIR=str(tmp_path / "config"))
    proc = _start(argv, env, tmp_path / "api.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            try:
                if _get(port, "/v2/health/ready") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.2)
        assert _get(port, "/v2/health/live") == 200
        # Metrics want a viewer token (deploy/README.md: the scrape job is given one).
        assert _get(port, "/metrics") == 401
        made = subprocess.run([sys.executable, "-m", "pynomaly", "token", "create", "--user", "prometheus",
                               "--role", "viewer"], env=env, capture_output=True, text=True, check=True)
        assert _get(port, "/metrics", made.stdout.split()[-1]) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn drains, then ends by the signal it was sent (as Kubernetes expects of PID 1).
        assert proc.wait(40) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in (tmp_path / "api.log").read_text()


def test_the_worker_deployment_command_runs_and_stops_on_sigterm(tmp_path, deployed_home):
    (worker,) = [c for c in _containers() if c["args"][0] == "worker"]
    env = dict(os.environ, PYNOMALY_HOME=deployed_home, PYNOMALY_CONFIG_DIR=str(tmp_path / "config"))
    proc = _start(worker["command"] + worker["args"], env, tmp_path / "worker.log")
    try:
        time.sleep(2)
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "worker.log").read_text()


def test_the_containerfile_build_and_install_steps_work(tmp_path):
    """No container engine runs here, so the image's two pip steps are run as written: the
    wheel is built from exactly the files the Containerfile copies, and installed as the
    runtime stage installs it into a clean environment, which then runs our command."""
    ins = _instructions()
    build_stage = ins[: [i for i, (w, _) in enumerate(ins) if w == "FROM"][1]]
    context = tmp_path / "context"
    context.mkdir()
    import shutil

    for word, rest in build_stage:
        if word == "COPY":
            *sources, dest = rest.split()
            for s in sources:
                src = REPO / s
                target = context / (s if dest.endswith("/") or dest == "./" else dest)
                if src.is_dir():
                    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
                else:
                    shutil.copy2(src, target)
    wheels = tmp_path / "wheels"
    # The build stage's pip steps, in an environment of their own (as the image's python is):
    # first what the build needs, then the wheel. Its apt-get step is this machine's toolchain.
    build_env = tmp_path / "build-env"
    subprocess.run([sys.executable, "-m", "venv", str(build_env)], check=True)
    steps = [r for w, r in build_stage if w == "RUN" and r.startswith("pip ")]
    assert len(steps) == 2 and "pip wheel" in steps[-1], steps
    (install,) = [r for w, r in ins if w == "RUN" and "/wheels/pynomaly" in r]
    run = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    for step in steps:
        built = subprocess.run(step.replace("/wheels", str(wheels)).replace("pip ", f"{build_env}/bin/pip ", 1),
                               shell=True, cwd=context, env=run, capture_output=True, text=True, timeout=900)
        if built.returncode != 0 and "No matching distribution" in built.stderr + built.stdout:
            pytest.skip(f"the package index is out of reach: {built.stderr[-500:]}")
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run(install.replace("/wheels", str(wheels)).replace("pip ", f"{venv}/bin/pip ", 1),
                               shell=True, env=run, capture_output=True, text=True, timeout=900)
    if installed.returncode != 0 and "No matching distribution" in installed.stderr + installed.stdout:
        pytest.skip(f"the package index is out of reach: {installed.stderr[-500:]}")
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import pynomaly, pynomaly_api.app, psycopg; print(pynomaly.__version__, pynomaly.__file__)"],
        capture_output=True, text=True, check=True)
    got_version, where = probe.stdout.split()
    assert got_version == version and where.startswith(str(venv)), probe.stdout
    (entry,) = [_json_form(r) for w, r in ins if w == "ENTRYPOINT"]
    (cmd,) = [_json_form(r) for w, r in ins if w == "CMD"]
    helped = subprocess.run([str(venv / "bin" / entry[0]), cmd[0], "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--port" in helped.stdout, helped.stderr


def test_keys_mounted_as_kubernetes_mounts_a_secret_are_accepted(tmp_path):
    """The Secret is mounted root:fsGroup with the manifests' defaultMode (0440); the signing
    key's check takes that, as PostgreSQL does for its key, and still refuses wider modes."""
    from pynomaly.store._files import private_enough

    modes = {v["secret"]["defaultMode"] for d in _of_kind("Deployment")
             for v in d["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert modes == {0o440}
    key = tmp_path / "secret.key"
    key.write_bytes(os.urandom(32))
    for mode, root_owned, ok in ((0o600, False, True), (0o400, False, True), (0o440, False, False),
                                 (0o440, True, True), (0o460, True, False), (0o444, True, False),
                                 (0o604, False, False)):
        if root_owned and os.geteuid() != 0:
            continue  # only root can give a file to root
        if os.geteuid() == 0:
            os.chown(key, 0 if root_owned else 65534, -1)
        key.chmod(mode)
        assert private_enough(key.stat()) is ok, (oct(mode), root_owned)
