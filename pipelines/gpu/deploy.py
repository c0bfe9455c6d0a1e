"""Export a serving profile and submit the TensorRT build Job: what `rxrec export` and the DAG task call.

- `export_profile` writes the CPU profile (the deploy stage's Python-backend repository) or the GPU
  profile (pipelines/gpu/profile.py) from the registry's champion or a given ONNX file.
- `build_tensorrt_engine` (the DAG task, when params.yaml `gpu.enabled`) writes the champion's GPU
  version, uploads it to the S3 model repository, submits infra/k8s/tensorrt-build-job.yaml to the
  GPU node pool with `kubectl` and waits for it. Without kubectl or a reachable cluster it fails
  before writing anything, with the reason.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from pipelines.core.config import PROJECT_ROOT, Paths, Settings
from pipelines.gpu.profile import (
    LINEAGE_FILE,
    VERSION_FILES,
    GpuProfileOptions,
    latest_version_onnx,
    sha256_file,
    write_gpu_model,
    write_gpu_repository,
)

JOB_MANIFEST = PROJECT_ROOT / "infra" / "k8s" / "tensorrt-build-job.yaml"
CODE_CONFIGMAP = "rxrec-tensorrt-code"
#: ConfigMap key -> file of this repository: the build code the Job runs (same commit as the DAG).
CODE_FILES = {
    "pipelines__init__.py": "pipelines/__init__.py",
    "files.py": "pipelines/core/files.py",
    "core__init__.py": "pipelines/core/__init__.py",
    "gpu__init__.py": "pipelines/gpu/__init__.py",
    "contract.py": "pipelines/core/contract.py",
    "tensorrt.py": "pipelines/gpu/tensorrt.py",
}
BUILD_CONTAINER = "build-engine"
SIMILAR_ITEMS = "similar_items"


class ClusterUnavailable(RuntimeError):
    """kubectl is missing or no Kubernetes cluster answers: the GPU build cannot be submitted."""


# --------------------------------------------------------------------------- export (CLI)


def champion_onnx(s: Settings, p: Paths, staging: Path) -> tuple[Path, dict[str, Any]]:
    """Download the registry's `champion` ONNX to staging; returns it with its lineage metadata."""
    from pipelines.track.service import CHAMPION, MlflowService

    name, uri = s.mlflow.registered_model, p.tracking_uri(s)
    registry = MlflowService.from_settings(s, p)
    champion = registry.alias_version(name, CHAMPION)
    if champion is None:
        raise RuntimeError(f"model {name!r} in {uri} has no {CHAMPION!r} alias: nothing to export "
                           "(run the pipeline up to `register`, or pass --onnx)")
    if staging.exists():
        shutil.rmtree(staging)
    onnx_path = registry.download_model(f"models:/{name}/{champion.version}", staging)
    return onnx_path, {"registered_model": name, "model_version": str(champion.version), "alias": CHAMPION,
                       "run_id": champion.run_id, "tracking_uri": uri, **champion.tags}


def export_profile(s: Settings, p: Paths, *, profile: str, out: Path | None = None, onnx: Path | None = None,
                   variant: str | None = None) -> dict[str, Any]:
    """Write the `cpu` or `gpu` serving profile of the champion (or of `onnx`) into a model repository."""
    if profile not in ("cpu", "gpu"):
        raise ValueError(f"unknown profile {profile!r}: choose cpu or gpu")
    if onnx is not None:
        onnx_path, meta = Path(onnx), {"source": "file", "onnx": str(Path(onnx).resolve())}
        if not onnx_path.is_file():
            raise FileNotFoundError(f"--onnx {onnx_path} does not exist")
    else:
        onnx_path, meta = champion_onnx(s, p, p.var / "export" / "download")
    if profile == "cpu":
        return _export_cpu(s, Path(out) if out else p.triton_repo, onnx_path, meta)
    options = GpuProfileOptions.from_settings(s.gpu)
    models = {s.serve.model_name: onnx_path}
    similar = latest_version_onnx(p.triton_repo, SIMILAR_ITEMS)
    if similar is not None:  # optional: the CPU repository's similar_items graph, when deployed
        models[SIMILAR_ITEMS] = similar
    target = Path(out) if out else gpu_repository(s, p)
    return write_gpu_repository(target, models, variant=variant or s.gpu.variant, options=options,
                                metadata={s.serve.model_name: meta, SIMILAR_ITEMS: {"source": str(similar)}})


def _export_cpu(s: Settings, repo: Path, onnx_path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from pipelines.repository.metadata import read_model_metadata
    from pipelines.repository.versions import write_model_config, write_version

    write_model_config(repo, s.serve.model_name, read_model_metadata(onnx_path), max_batch_size=s.serve.max_batch_size,
                       instance_count=s.serve.instance_count)
    path = write_version(repo, s.serve.model_name, onnx_path, metadata=meta)
    return {"repository": str(repo), "variant": "python", "versions": {s.serve.model_name: str(path)}}


def gpu_repository(s: Settings, p: Paths) -> Path:
    path = Path(s.gpu.repository)
    return path if path.is_absolute() else p.root / path


# --------------------------------------------------------------------------- Kubernetes Job


def load_job_manifest(path: Path = JOB_MANIFEST) -> dict[str, Any]:
    manifest = yaml.safe_load(Path(path).read_text())
    if not isinstance(manifest, dict) or manifest.get("kind") != "Job":
        raise ValueError(f"{path} must hold one Kubernetes Job")
    return manifest


def job_name(model_name: str, version: int) -> str:
    """A DNS-1123 name per model version, so each build is its own (immutable) Job."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"rxrec-tensorrt-build-{model_name.lower()}-v{version}").strip("-")
    return name[:63].rstrip("-")


def render_job(manifest: dict[str, Any], *, model_name: str, version: int, s: Settings) -> dict[str, Any]:
    """The Job for one model version: name, namespace, GPU type, image, MODEL_NAME/MODEL_VERSION set."""
    job = copy.deepcopy(manifest)
    job["metadata"]["name"] = job_name(model_name, version)
    job["metadata"]["namespace"] = s.gpu.namespace
    job["spec"]["activeDeadlineSeconds"] = int(s.gpu.job_timeout_s)
    pod = job["spec"]["template"]["spec"]
    pod["nodeSelector"] = {s.gpu.gpu_node_label: s.gpu.gpu_type}
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        if container["name"] == BUILD_CONTAINER:
            container["image"] = s.gpu.image
        env = copy.deepcopy(container.get("env") or [])
        for var in env:
            if var["name"] == "MODEL_NAME":
                var["value"] = model_name
            elif var["name"] == "MODEL_VERSION":
                var["value"] = str(version)
        container["env"] = env
    return job


def code_configmap(namespace: str, root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """ConfigMap with the build code (tensorrt.py and what it imports) from this checkout."""
    data = {key: (root / rel).read_text() for key, rel in CODE_FILES.items()}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CODE_CONFIGMAP, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "rxrec",
                                    "app.kubernetes.io/component": "tensorrt-build"}},
            "data": data}


def _kubectl(s: Settings, args: list[str], stdin: str | None = None, timeout: float = 60) -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        raise ClusterUnavailable("kubectl is not installed: it submits the TensorRT build Job "
                                 "(infra/k8s/tensorrt-build-job.yaml) to the GPU node pool")
    context = ["--context", s.gpu.kube_context] if s.gpu.kube_context else []
    try:
        proc = subprocess.run([exe, *context, *args], input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ClusterUnavailable(f"kubectl {' '.join(args[:2])} did not answer within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def ensure_cluster(s: Settings) -> str:
    """The API server's version, or ClusterUnavailable naming the context and what kubectl said."""
    where = f"context {s.gpu.kube_context!r}" if s.gpu.kube_context else "kubectl's current context"
    try:
        out = _kubectl(s, ["version", "-o", "json", "--request-timeout=15s"], timeout=30)
    except RuntimeError as exc:
        if isinstance(exc, ClusterUnavailable):
            raise
        raise ClusterUnavailable(f"no Kubernetes cluster is reachable ({where}): {exc}. Set params.yaml "
                                 "gpu.kube_context, or gpu.enabled=false to skip the TensorRT build") from exc
    server = json.loads(out).get("serverVersion")
    if not server:
        raise ClusterUnavailable(f"no Kubernetes cluster is reachable ({where}): kubectl reports no server version")
    return str(server.get("gitVersion", "unknown"))


def upload_model(local_model_dir: Path, version: int, repository_uri: str) -> list[str]:
    """Copy config.pbtxt and one version folder to s3://bucket/prefix/<model>/ (config last)."""
    parsed = urlparse(repository_uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"gpu.model_repository_uri must be s3://bucket/prefix, got {repository_uri!r}")
    import boto3

    client = boto3.client("s3")
    prefix = "/".join(x for x in (parsed.path.strip("/"), local_model_dir.name) if x)
    uploaded = []
    version_dir = local_model_dir / str(version)
    for path in sorted(f for f in version_dir.iterdir() if f.is_file()) + [local_model_dir / "config.pbtxt"]:
        key = f"{prefix}/{path.relative_to(local_model_dir).as_posix()}"
        client.upload_file(str(path), parsed.netloc, key)
        uploaded.append(f"s3://{parsed.netloc}/{key}")
    return uploaded


def wait_for_job(s: Settings, name: str, poll_s: float = 15) -> dict[str, Any]:
    """Poll the Job until it succeeds, fails or gpu.job_timeout_s passes."""
    deadline = time.monotonic() + s.gpu.job_timeout_s
    while True:
        status = json.loads(_kubectl(s, ["get", "job", name, "-n", s.gpu.namespace, "-o", "json"]))["status"]
        conditions = {c["type"]: c for c in status.get("conditions", []) if c.get("status") == "True"}
        if "Complete" in conditions:
            return {"state": "succeeded", **status}
        if "Failed" in conditions:
            raise RuntimeError(f"TensorRT build Job {s.gpu.namespace}/{name} failed: "
                               f"{conditions['Failed'].get('message', '')}; see "
                               f"`kubectl logs -n {s.gpu.namespace} job/{name} -c {BUILD_CONTAINER}`")
        if time.monotonic() > deadline:
            raise TimeoutError(f"TensorRT build Job {s.gpu.namespace}/{name} not done after {s.gpu.job_timeout_s} s")
        time.sleep(poll_s)


def _reusable_version(model_dir: Path, onnx_sha: str, variant: str) -> int | None:
    """The newest GPU version already holding this exact ONNX in this variant (a re-run writes nothing)."""
    versions = sorted((int(d.name) for d in model_dir.glob("[0-9]*") if d.name.isdigit()), reverse=True)
    if not versions:
        return None
    lineage_file = model_dir / str(versions[0]) / LINEAGE_FILE
    lineage = json.loads(lineage_file.read_text()) if lineage_file.exists() else {}
    same = lineage.get("onnx_sha256") == onnx_sha and lineage.get("variant") == variant
    complete = all((model_dir / str(versions[0]) / f).exists() for f in VERSION_FILES[variant])
    return versions[0] if same and complete else None


def build_tensorrt_engine(s: Settings, p: Paths) -> dict[str, Any]:
    """Write the served champion's GPU version, upload it, build its engine on the GPU pool; wait for it."""
    server = ensure_cluster(s)  # first: a missing cluster must not leave half-done uploads behind
    onnx_path = latest_version_onnx(p.triton_repo, s.serve.model_name)
    if onnx_path is None:
        raise FileNotFoundError(f"no deployed {s.serve.model_name} version with model.onnx in {p.triton_repo}: "
                                "run the deploy stage first")
    repo = gpu_repository(s, p)
    model_dir = repo / s.serve.model_name
    variant = s.gpu.variant
    version = _reusable_version(model_dir, sha256_file(onnx_path), variant)
    if version is None:
        lineage = json.loads((onnx_path.parent / LINEAGE_FILE).read_text()).get("metadata", {}) \
            if (onnx_path.parent / LINEAGE_FILE).exists() else {}
        written = write_gpu_model(repo, s.serve.model_name, onnx_path, variant=variant,
                                  options=GpuProfileOptions.from_settings(s.gpu),
                                  metadata={**lineage, "cpu_version": onnx_path.parent.name})
        version = int(written.name)
    uploaded = upload_model(model_dir, version, s.gpu.model_repository_uri)
    summary: dict[str, Any] = {"cluster": server, "variant": variant, "gpu_version": version,
                               "uploaded": uploaded, "local_version": str(model_dir / str(version))}
    if variant != "tensorrt_plan":
        summary["job"] = None  # onnxruntime_trt: ONNX Runtime builds and caches the engine at load
        return summary
    job = render_job(load_job_manifest(), model_name=s.serve.model_name, version=version, s=s)
    documents = {"apiVersion": "v1", "kind": "List", "items": [code_configmap(s.gpu.namespace), job]}
    _kubectl(s, ["apply", "-f", "-"], stdin=yaml.safe_dump(documents, sort_keys=False))
    name = job["metadata"]["name"]
    status = wait_for_job(s, name)
    plan_uri = f"{s.gpu.model_repository_uri.rstrip('/')}/{s.serve.model_name}/{version}/model.plan"
    return {**summary, "job": f"{s.gpu.namespace}/{name}", "job_state": status["state"], "plan": plan_uri}
