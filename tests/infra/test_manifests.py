"""Kubernetes manifests, the compose file and the profile settings: valid, and consistent with each other.

Every manifest in infra/k8s/ is validated offline against the Kubernetes JSON schemas shipped by
`kubernetes-validate` (pinned Kubernetes version, strict: unknown fields fail); custom resources whose
schemas are not part of Kubernetes are skipped by name, with the reason. Then names, ports, images,
volumes and secrets are cross-checked between manifests, Helm values, docker-compose and infra/profiles.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
COMPOSE = REPO / "infra" / "compose" / "docker-compose.yaml"
HELM_VALUES = K8S / "airflow-values.yaml"  # values of the official chart, not a manifest
KUBERNETES_VERSION = "1.33.0"
NAMESPACE = "rxrec"
# Custom resources: their schemas come with their operators, not with Kubernetes.
SKIPPED_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator CRD"}
# Objects referenced but created outside these manifests, and by whom.
EXTERNAL_SECRETS = {"rxrec-s3": "kubectl create secret (docs/stack.md)",
                    "rxrec-postgres": "kubectl create secret (docs/stack.md)",
                    "rxrec-mlflow-auth": "kubectl create secret (docs/stack.md)"}
SERVER_ONLY_SECRETS = {"MLFLOW_FLASK_SERVER_SECRET_KEY"}  # MLflow's CSRF key: the server's, no client reads it
EXTERNAL_CONFIGMAPS = {"rxrec-tensorrt-code": "the build_tensorrt_engine task (docs/gpu.md)"}

sys.path.insert(0, str(REPO / "infra" / "stack"))
from profiles import PROFILES, placeholders, read_profile, secret_names

from tests.scripts import load_script


def _stack_module():
    return load_script("infra/stack/stack.py", "rxrec_stack_for_manifests")


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != HELM_VALUES)


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in _manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


DOCS = _documents()


def _find(kind: str, name: str) -> dict:
    matches = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r} in infra/k8s, found {len(matches)}"
    return matches[0]


def _pod_spec(doc: dict) -> dict | None:
    spec = doc.get("spec", {})
    if doc["kind"] == "Pod":
        return spec
    if "template" in spec:
        return spec["template"]["spec"]
    if "jobTemplate" in spec:
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return None


def _gpu_pod_override() -> dict:
    return yaml.safe_load(_find("ConfigMap", "rxrec-airflow-gpu-pod")["data"]["pod_override.yaml"])


def _pod_specs() -> list[tuple[str, dict]]:
    specs = [(f"{d['kind']}/{d['metadata']['name']}", _pod_spec(d)) for _, d in DOCS]
    return [(n, s) for n, s in specs if s is not None] + [("gpu pod override", _gpu_pod_override()["spec"])]


def _containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def _walk(node: object):
    """Every dict inside a YAML tree."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    from kubernetes_validate import utils

    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path} holds no manifest"
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in SKIPPED_KINDS:
            continue
        try:
            utils.validate(doc, KUBERNETES_VERSION, strict=True)
        except utils.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata'].get('name')} at "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")
        except utils.SchemaNotFoundError:
            pytest.fail(f"{path.name}: no Kubernetes {KUBERNETES_VERSION} schema for {key}; if it is a CRD, add it "
                        "to SKIPPED_KINDS with the reason")


def test_gpu_pod_override_is_a_valid_pod() -> None:
    from kubernetes_validate import utils

    utils.validate(_gpu_pod_override(), KUBERNETES_VERSION, strict=True)


def test_skipped_kinds_are_really_used() -> None:
    used = {(d["apiVersion"], d["kind"]) for _, d in DOCS}
    assert set(SKIPPED_KINDS) <= used, "drop skips for kinds no manifest uses"


# --------------------------------------------------------------------------- names and references


def test_everything_lives_in_the_rxrec_namespace() -> None:
    assert _find("Namespace", NAMESPACE)
    for name, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{name}: {doc['kind']} outside {NAMESPACE}"


def test_configmap_is_the_kubernetes_profile() -> None:
    data = _find("ConfigMap", "rxrec-config")["data"]
    profile = read_profile("kubernetes")
    assert data == profile, "infra/k8s/configmap.yaml and infra/profiles/kubernetes.env must hold the same settings"
    assert not placeholders(profile)
    assert data["MODEL_REPOSITORY"] == "s3://rxrec-models/triton_repo"
    assert data["AIRFLOW__CORE__EXECUTOR"] == "KubernetesExecutor"


def test_secrets_are_referenced_never_committed() -> None:
    assert not [d for _, d in DOCS if d["kind"] == "Secret"], "Secrets are created by hand, never committed"
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for _, d in DOCS if d["kind"] == "ConfigMap"}
    secret_keys: set[str] = set()
    for name, doc in DOCS:
        for node in _walk(doc):
            if "secretKeyRef" in node:
                ref = node["secretKeyRef"]
                assert ref["name"] in EXTERNAL_SECRETS, f"{name}: unknown Secret {ref['name']!r}"
                secret_keys.add(ref["key"])
            if "configMapKeyRef" in node:
                ref = node["configMapKeyRef"]
                assert ref["name"] in configmaps, f"{name}: ConfigMap {ref['name']!r} is not in infra/k8s"
                assert ref.get("optional") or ref["key"] in configmaps[ref["name"]], \
                    f"{name}: {ref['name']} has no key {ref['key']!r}"
            if "configMapRef" in node:
                assert node["configMapRef"]["name"] in configmaps
    assert secret_keys == set(secret_names(read_profile("kubernetes"))) | SERVER_ONLY_SECRETS, \
        "the manifests provide exactly the secrets the kubernetes profile names (and the server's own)"


def test_mlflow_requires_login_in_compose_and_kubernetes() -> None:
    """Both run MLflow's basic-auth app from mlflow/basic_auth.ini, the template mlflow/server.sh fills in."""
    import configparser

    def ini(text: str) -> dict:
        parser = configparser.ConfigParser()
        parser.read_string(text)
        return {section: dict(parser[section]) for section in parser.sections()}

    template = ini((REPO / "mlflow" / "basic_auth.ini").read_text())
    assert ini(_find("ConfigMap", "rxrec-mlflow-basic-auth")["data"]["basic_auth.ini"]) == template
    k8s = _find("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    k8s_env = {e["name"]: e for e in k8s["env"]}
    compose = _compose()["services"]["mlflow"]
    for command, env in ((" ".join(k8s["args"]), {k: v.get("value", v) for k, v in k8s_env.items()}),
                         (" ".join(compose["command"]), compose["environment"])):
        assert "--app-name basic-auth" in command and "/etc/rxrec/basic_auth.ini" in command
        assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/tmp/basic_auth.ini"
        assert urlsplit(env["MLFLOW_AUTH_DATABASE_URI"]).path == "/mlflow_auth"
        assert {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(env)
    assert k8s_env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "MLFLOW_TRACKING_PASSWORD"
    assert compose["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == "${MLFLOW_TRACKING_PASSWORD:?set MLFLOW_TRACKING_PASSWORD}"
    for name in PROFILES[1:]:  # stack and kubernetes: clients log in as the admin with the secret password
        profile = read_profile(name)
        assert profile["MLFLOW_TRACKING_USERNAME"] == "admin" and "MLFLOW_TRACKING_PASSWORD" in secret_names(profile)


def test_pod_volumes_are_defined_and_mounted() -> None:
    configmaps = {d["metadata"]["name"] for _, d in DOCS if d["kind"] == "ConfigMap"}
    for name, spec in _pod_specs():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted = {m["name"] for c in _containers(spec) for m in c.get("volumeMounts", [])}
        assert mounted <= set(volumes), f"{name}: mounts undefined volumes {mounted - set(volumes)}"
        assert set(volumes) <= mounted, f"{name}: volumes never mounted {set(volumes) - mounted}"
        for volume in volumes.values():
            if "configMap" in volume:
                ref = volume["configMap"]["name"]
                assert ref in configmaps or ref in EXTERNAL_CONFIGMAPS, f"{name}: ConfigMap {ref!r} is unknown"


def test_services_select_pods_and_name_their_ports() -> None:
    workloads = [d for _, d in DOCS if d["kind"] == "Deployment"]
    for _, svc in [(n, d) for n, d in DOCS if d["kind"] == "Service" and d["spec"].get("selector")]:
        pods = [w for w in workloads
                if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, f"Service {svc['metadata']['name']} selects {len(pods)} Deployments"
        container_ports = {p["name"]: p["containerPort"] for c in pods[0]["spec"]["template"]["spec"]["containers"]
                           for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"{svc['metadata']['name']}: {port['targetPort']}"
            assert container_ports[port["targetPort"]] == port["port"]
        assert pods[0]["spec"]["selector"]["matchLabels"] == pods[0]["spec"]["template"]["metadata"]["labels"]


def test_triton_ports_probes_metrics_and_autoscaling_agree() -> None:
    from pipelines.core.config import load_settings

    serve = load_settings().serve
    deployment = _find("Deployment", "triton")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": serve.http_port, "grpc": serve.grpc_port, "metrics": serve.metrics_port}
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    assert int(args["http-port"]) == ports["http"] and int(args["metrics-port"]) == ports["metrics"]
    assert args["model-repository"] == "$(MODEL_REPOSITORY)"
    assert {e["name"] for e in container["env"]} >= {"MODEL_REPOSITORY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ports, f"{probe} names no container port"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    monitor = _find("ServiceMonitor", "triton")
    service = _find("Service", "triton")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    hpa = _find("HorizontalPodAutoscaler", "triton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    rules = _find("ConfigMap", "triton-adapter-rules")["data"]["config.yaml"]
    assert metrics["Pods"]["pods"]["metric"]["name"] in rules, "the adapter must expose the HPA's queue-time metric"
    assert metrics["External"]["external"]["metric"]["name"] == "DCGM_FI_DEV_GPU_UTIL"


def test_gpu_workloads_share_pool_release_and_ask_for_a_gpu() -> None:
    triton = _find("Deployment", "triton")["spec"]["template"]["spec"]
    job = _find("Job", "rxrec-tensorrt-build")["spec"]["template"]["spec"]
    training = _gpu_pod_override()["spec"]
    for name, spec in {"tensorrt job": job, "gpu pod override": training}.items():
        assert spec["nodeSelector"] == triton["nodeSelector"], f"{name}: another GPU node pool than Triton's"
        assert spec["tolerations"] == triton["tolerations"], name
    for name, spec in {"triton": triton, "tensorrt job": job, "gpu pod override": training}.items():
        assert any(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") == 1 for c in _containers(spec)), name
    assert training["containers"][0]["name"] == "base", "the KubernetesExecutor's task container is `base`"
    release = {c["image"].rsplit(":", 1)[1] for c in _containers(triton) + _containers(job) if "nvcr.io" in c["image"]}
    assert release == {"24.10-py3"}, f"the engine must be built with the serving Triton's release: {release}"


def test_mlflow_and_postgres_match_the_profile() -> None:
    profile = read_profile("kubernetes")
    tracking = urlsplit(profile["RXREC_MLFLOW_TRACKING_URI"])
    service = _find("Service", tracking.hostname.split(".")[0])
    assert tracking.port in {p["port"] for p in service["spec"]["ports"]}
    for key in ("MLFLOW_BACKEND_STORE_URI", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        url = urlsplit(profile[key])
        assert url.password is None, f"{key} must not hold a password"
        postgres = _find("Service", url.hostname.split(".")[0])
        assert url.port in {p["port"] for p in postgres["spec"]["ports"]}
    container = _find("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert {"configMapRef": {"name": "rxrec-config"}} in container["envFrom"]
    assert "$MLFLOW_BACKEND_STORE_URI" in container["args"][0] and "$MLFLOW_ARTIFACTS_DESTINATION" in container["args"][0]


# --------------------------------------------------------------------------- Helm values


def _local_settings() -> dict:
    tree = ast.parse(yaml.safe_load(HELM_VALUES.read_text())["airflowLocalSettings"])
    return {t.id: node.value for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


def test_helm_values_use_kubernetes_executor_config_and_secrets() -> None:
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert values["executor"] == read_profile("kubernetes")["AIRFLOW__CORE__EXECUTOR"]
    assert values["airflowVersion"] == "3.3.2"
    env_from = yaml.safe_load(values["extraEnvFrom"])
    assert {"configMapRef": {"name": "rxrec-config"}} in env_from
    assert {s["secretName"] for s in values["secret"]} <= set(EXTERNAL_SECRETS)
    assert {s["envName"] for s in values["secret"]} == set(secret_names(read_profile("kubernetes")))
    assert values["config"]["kubernetes_executor"]["namespace"] == NAMESPACE


def test_helm_values_mount_the_gpu_pod_override_for_dag_tasks() -> None:
    values = yaml.safe_load(HELM_VALUES.read_text())
    settings = _local_settings()
    compile(yaml.safe_load(HELM_VALUES.read_text())["airflowLocalSettings"], "airflow_local_settings.py", "exec")
    (volume,) = values["volumes"]
    (mount,) = values["volumeMounts"]
    assert mount["name"] == volume["name"]
    configmap = _find("ConfigMap", volume["configMap"]["name"])
    override_path = Path(ast.literal_eval(settings["GPU_POD_OVERRIDE"].args[0]))
    assert override_path.parent == Path(mount["mountPath"]) and override_path.name in configmap["data"]
    gpu_tasks = ast.literal_eval(settings["GPU_TASKS"])
    stages = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert gpu_tasks <= stages, f"GPU tasks that are not DAG tasks: {gpu_tasks - stages}"
    assert "train_gpt4rec" in gpu_tasks
    assert ast.literal_eval(settings["GPU_DAG"]) == "retrain_and_promote"


# --------------------------------------------------------------------------- compose and profiles

COMPOSE_HOSTS = {"POSTGRES": ("postgres", 5432), "REDIS": ("redis", 6379), "S3": ("s3", 9000),
                 "MLFLOW": ("mlflow", 5000), "TRITON_HTTP": ("triton", 8000)}
COMPOSE_WORKDIR = "/opt/rxrec/work"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_environment_is_the_stack_profile() -> None:
    """Same keys and values as infra/profiles/stack.env, with service names and their default ports."""
    env = _compose()["x-rxrec-env"]
    expected = {}
    for key, value in read_profile("stack").items():
        for name, (host, port) in COMPOSE_HOSTS.items():
            value = value.replace(f"${{RXREC_STACK_HOST}}:${{RXREC_{name}_PORT}}", f"{host}:{port}")
        expected[key] = value.replace("${RXREC_WORKDIR}", COMPOSE_WORKDIR)
    assert {k: str(v) for k, v in env.items() if k in expected} == expected
    for name in secret_names(expected):
        assert env[name] == f"${{{name}:?set {name}}}", f"{name} must come from the environment"


def test_compose_services_images_volumes_and_ports_agree() -> None:
    compose = _compose()
    services = compose["services"]
    for host, port in COMPOSE_HOSTS.values():
        assert host in services, f"the profile names service {host!r}"
    triton = services["triton"]
    k8s_triton = _find("Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    assert triton["image"] == k8s_triton["image"]
    repo = dict(a.removeprefix("--").split("=", 1) for a in triton["command"][1:])["model-repository"]
    assert repo == compose["x-rxrec-env"]["MODEL_REPOSITORY"]
    assert repo == compose["x-rxrec-env"]["RXREC_TRITON_REPO"], "workers write where Triton reads"
    volume = next(v.split(":")[0] for v in triton["volumes"] if v.endswith(":" + COMPOSE_WORKDIR))
    for name in ("airflow-worker-1", "airflow-worker-2"):
        assert f"{volume}:{COMPOSE_WORKDIR}" in services[name]["volumes"]
        assert services[name]["environment"]["RXREC_WORKER_HOSTNAME"] == name.removeprefix("airflow-")
    declared = set(compose["volumes"])
    for name, service in services.items():
        for spec in service.get("volumes", []):
            source = spec.split(":")[0]
            assert source.startswith(".") or source in declared, f"{name}: undeclared volume {source!r}"
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
    assert services["mlflow"]["image"] == _find("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["image"]
    values = yaml.safe_load(HELM_VALUES.read_text())["images"]["airflow"]
    assert services["airflow-scheduler"]["image"] == f"{values['repository']}:{values['tag']}"
    assert {f"127.0.0.1:{p}:{p}" for p in (8000, 8001, 8002)} <= set(triton["ports"])
    for name in ("mlflow.Dockerfile", "airflow.Dockerfile"):
        assert (COMPOSE.parent / name).exists()


def test_profiles_share_their_keys_and_hold_no_secrets() -> None:
    profiles = {name: read_profile(name) for name in PROFILES}
    core = set.intersection(*(set(p) for p in profiles.values()))
    assert core >= {"RXREC_PROFILE", "AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                    "RXREC_MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION",
                    "RXREC_DVC_REMOTE", "MODEL_REPOSITORY", "RXREC_TRITON_URL", "RXREC_SECRETS"}
    for name, values in profiles.items():
        assert values["RXREC_PROFILE"] == name
        for key, value in values.items():
            assert not re.search(r"(PASSWORD|SECRET|TOKEN)", key) or key == "RXREC_SECRETS", f"{name}: {key}"
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{name}: {key} holds credentials"
        for secret in secret_names(values):
            assert secret not in values, f"{name}: {secret} must come from the environment"
    compose = _compose()
    for key, value in compose["x-rxrec-env"].items():
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)), f"compose: {key} holds credentials"


def test_profiles_agree_with_launchers_remotes_and_params() -> None:
    from pipelines.core.config import load_settings

    stack = _stack_module()
    local, stack_env, k8s = (read_profile(n) for n in PROFILES)
    assert local["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"  # infra/airflow/launcher.py's default
    assert local["RXREC_TRITON_URL"] == f"127.0.0.1:{load_settings().serve.http_port}"
    assert stack_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    dvc_config = (REPO / ".dvc" / "config").read_text()
    remotes = set(re.findall(r"\['remote \"([^\"]+)\"'\]", dvc_config))
    assert {p["RXREC_DVC_REMOTE"] for p in (local, stack_env, k8s)} <= remotes
    dvc_bucket = urlsplit(re.search(r"url = (s3://\S+)", dvc_config)[1]).hostname
    buckets = {dvc_bucket, urlsplit(k8s["MLFLOW_ARTIFACTS_DESTINATION"]).hostname,
               urlsplit(k8s["MODEL_REPOSITORY"]).hostname, urlsplit(stack_env["MLFLOW_ARTIFACTS_DESTINATION"]).hostname}
    assert buckets == set(stack.BUCKETS), "the stack creates every bucket the profiles use"
    databases = {urlsplit(p[k]).path.strip("/") for p in (stack_env, k8s)
                 for k in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "MLFLOW_BACKEND_STORE_URI")}
    assert databases == set(stack.DATABASES)
    assert {urlsplit(stack_env[k]).username for k in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                                                       "MLFLOW_BACKEND_STORE_URI")} == {stack.DB_USER}
    init_sql = (COMPOSE.parent / "postgres-init.sql").read_text()
    compose = _compose()
    # compose keeps MLflow's login users in Postgres too (`make stack`: SQLite under var/stack)
    auth_db = urlsplit(compose["services"]["mlflow"]["environment"]["MLFLOW_AUTH_DATABASE_URI"]).path.strip("/")
    assert set(re.findall(r"CREATE DATABASE (\w+)", init_sql)) | {compose["services"]["postgres"]["environment"][
        "POSTGRES_DB"]} == set(stack.DATABASES) | {auth_db}


# --------------------------------------------------------------------------- Airflow components and plugins


def test_every_airflow_deployment_runs_a_triggerer_and_the_rxrec_plugins() -> None:
    """`make airflow` (so the stack), compose and Helm: the same components, triggerer included, and the
    plugins folder with the "MLflow run" link, the path each one sees."""
    launcher = load_script("infra/airflow/launcher.py", "rxrec_launcher_for_manifests")
    assert set(launcher.COMPONENTS) == {"api-server", "scheduler", "dag-processor", "triggerer"}
    assert launcher.COMPONENTS["triggerer"][0] == "triggerer"
    plugins = REPO / "infra" / "airflow" / "plugins"
    assert (plugins / "rxrec_plugin.py").is_file()
    assert launcher.environment(REPO / "var" / "airflow", 8080)["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(plugins)
    compose = _compose()
    services = compose["services"]
    components = {name.removeprefix("airflow-"): s for name, s in services.items()
                  if name.startswith("airflow-") and not name.startswith(("airflow-worker", "airflow-init"))}
    assert set(components) == set(launcher.COMPONENTS)
    assert all(s["command"][:2] == ["airflow", name] for name, s in components.items())
    in_image = "/opt/rxrec/infra/airflow/plugins"  # the Dockerfile copies the repository to /opt/rxrec
    assert "COPY --chown=airflow:0 . /opt/rxrec" in (COMPOSE.parent / "airflow.Dockerfile").read_text()
    assert compose["x-airflow-env"]["AIRFLOW__CORE__PLUGINS_FOLDER"] == in_image
    assert compose["x-airflow-env"]["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/rxrec/dags"
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert values["triggerer"]["enabled"] is True
    assert values["config"]["core"]["plugins_folder"] == in_image


def test_the_components_that_fork_tasks_preload_the_heavy_libraries_and_export_nothing(monkeypatch) -> None:
    """airflow_local_settings.py: the scheduler, the DAG processor and a Celery worker import torch, pandas and
    mlflow once (their forks parse the DAG file and run tasks); the API server and a task pod do not; every
    deployment puts the module on PYTHONPATH."""
    settings = load_script("infra/airflow/config/airflow_local_settings.py", "rxrec_airflow_local_settings")
    assert settings.__all__ == []  # Airflow copies the exported names into airflow.settings
    imported: list[str] = []
    monkeypatch.setattr(settings.importlib, "import_module", imported.append)
    for argv, preloads in ((["airflow", "scheduler", "--skip-serve-logs"], True), (["airflow", "dag-processor"], True),
                           (["airflow", "celery", "worker", "-q", "default"], True),
                           (["airflow", "api-server", "--port", "8080"], False), (["airflow", "triggerer"], False),
                           (["airflow", "tasks", "run", "retrain_and_promote", "worker"], False)):
        imported.clear()
        settings._preload(argv)
        assert imported == (["torch", "pandas", "mlflow"] if preloads else []), argv
    launcher = load_script("infra/airflow/launcher.py", "rxrec_launcher_for_local_settings")
    folder = str(REPO / "infra" / "airflow" / "config")
    assert folder in launcher.environment(REPO / "var" / "airflow", 8080)["PYTHONPATH"].split(os.pathsep)
    assert "ENV PYTHONPATH=/opt/rxrec:/opt/rxrec/infra/airflow/config " in \
        (COMPOSE.parent / "airflow.Dockerfile").read_text()
