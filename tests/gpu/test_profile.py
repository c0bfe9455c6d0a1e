"""The GPU serving profile: configs agree with the ONNX graph, versions are complete, the TensorRT build
refuses to run without TensorRT, and the Kubernetes Job runs exactly the module tested here."""

from __future__ import annotations

import ast
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper

from pipelines.core.config import PROJECT_ROOT, Paths, load_settings
from pipelines.core.contract import profile_shapes
from pipelines.export.onnx import export_onnx
from pipelines.gpu import deploy as gpu_deploy
from pipelines.gpu import tensorrt
from pipelines.gpu.profile import (
    VARIANTS,
    VERSION_FILES,
    GpuProfileOptions,
    read_onnx_spec,
    sha256_file,
    write_gpu_model,
)
from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig

text_format = pytest.importorskip("google.protobuf.text_format")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

MAX_LEN, TOP_K, N_ITEMS = 20, 10, 120
OPTIONS = GpuProfileOptions(max_batch_size=32, opt_batch_size=4, workspace_mib=512)
ONNX_TYPES = {TensorProto.INT64: model_config_pb2.TYPE_INT64, TensorProto.FLOAT: model_config_pb2.TYPE_FP32}
MANIFEST = PROJECT_ROOT / "infra" / "k8s" / "tensorrt-build-job.yaml"


@pytest.fixture(scope="module")
def gpt4rec_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = GPT4Rec(GPT4RecConfig(n_items=N_ITEMS, dim=16, layers=1, heads=2, max_len=MAX_LEN, dropout=0.0)).eval()
    return export_onnx(model, tmp_path_factory.mktemp("onnx"), k=TOP_K, opset=18)


def _parse(config: Path):
    return text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())


def _graph_io(onnx_path: Path) -> dict[str, tuple[str, int, list[int]]]:
    """name -> (role, Triton type, dims) read straight from the ONNX graph, independently of the writer."""
    graph = onnx.load(str(onnx_path)).graph
    out = {}
    for role, values in (("input", graph.input), ("output", graph.output)):
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            assert dims[0] == -1, "the batch dimension is dynamic in the exported graph"
            out[v.name] = (role, ONNX_TYPES[t.elem_type], dims[1:])
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_gpu_configs_match_the_onnx_graph(tmp_path, gpt4rec_onnx, variant):
    version_dir = write_gpu_model(tmp_path, "gpt4rec", gpt4rec_onnx, variant=variant, options=OPTIONS,
                                  metadata={"run_id": "abc"})
    assert version_dir == tmp_path / "gpt4rec" / "1"
    cfg = _parse(tmp_path / "gpt4rec" / "config.pbtxt")
    assert cfg.name == version_dir.parent.name == "gpt4rec"
    assert cfg.max_batch_size == OPTIONS.max_batch_size
    configured = {t.name: ("input", t.data_type, list(t.dims)) for t in cfg.input}
    configured |= {t.name: ("output", t.data_type, list(t.dims)) for t in cfg.output}
    assert configured == _graph_io(gpt4rec_onnx)
    assert configured["item_ids"] == ("output", model_config_pb2.TYPE_INT64, [TOP_K])
    assert [g.kind for g in cfg.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert cfg.HasField("dynamic_batching") and cfg.version_policy.latest.num_versions == 2
    # The version folder is complete: exactly the files this variant promises, the ONNX byte-identical.
    assert sorted(f.name for f in version_dir.iterdir()) == sorted(VERSION_FILES[variant])
    assert sha256_file(version_dir / "model.onnx") == sha256_file(gpt4rec_onnx)
    lineage = json.loads((version_dir / "lineage.json").read_text())
    assert lineage["variant"] == variant and lineage["version"] == 1 and lineage["metadata"] == {"run_id": "abc"}
    assert not [p for p in (tmp_path / "gpt4rec").iterdir() if p.name.startswith(".")], "no temp leftovers"


def test_tensorrt_plan_config_and_build_spec_agree_with_max_len(tmp_path, gpt4rec_onnx):
    version_dir = write_gpu_model(tmp_path, "gpt4rec", gpt4rec_onnx, variant="tensorrt_plan", options=OPTIONS)
    cfg = _parse(tmp_path / "gpt4rec" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert list(cfg.instance_group[0].profile) == ["0"]
    spec = json.loads((version_dir / "build.json").read_text())
    meta = {p.key: p.value for p in onnx.load(str(gpt4rec_onnx)).metadata_props}
    assert spec["max_len"] == int(meta["max_len"]) == MAX_LEN
    assert spec["max_batch"] == cfg.max_batch_size
    assert spec["profile"] == {"input_ids": {"min": [1, 1], "opt": [4, MAX_LEN], "max": [32, MAX_LEN]}}
    assert spec["onnx_sha256"] == sha256_file(version_dir / "model.onnx")
    assert [t["name"] for t in spec["outputs"]] == [t.name for t in cfg.output]
    # The builder reads the same file and derives the same profile from the same graph.
    build = tensorrt.BuildSpec.from_json(version_dir / "build.json")
    assert (build.max_batch, build.max_len, build.opt_batch, build.fp16) == (32, MAX_LEN, 4, True)
    inputs, outputs, _ = tensorrt.onnx_io(version_dir / "model.onnx")
    lo, opt, hi = profile_shapes(inputs[0].shape, max_batch=build.max_batch, opt_batch=build.opt_batch,
                                 max_len=build.max_len)
    assert [list(lo), list(opt), list(hi)] == [spec["profile"]["input_ids"][k] for k in ("min", "opt", "max")]
    assert [(o.name, o.dtype) for o in outputs] == [("item_ids", "int64"), ("scores", "float32")]
    # The job command in build.json parses with the real CLI.
    args = tensorrt._parser().parse_args(shlex.split(spec["command"])[3:])
    assert args.command == "build" and args.check and args.build_spec == Path("build.json")


def test_onnxruntime_trt_accelerator_settings(tmp_path, gpt4rec_onnx):
    write_gpu_model(tmp_path, "gpt4rec", gpt4rec_onnx, variant="onnxruntime_trt", options=OPTIONS)
    cfg = _parse(tmp_path / "gpt4rec" / "config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.default_model_filename == "model.onnx"
    (accelerator,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    params = dict(accelerator.parameters)
    assert accelerator.name == "tensorrt" and params["precision_mode"] == "FP16"
    assert params["max_workspace_size_bytes"] == str(512 << 20) and params["trt_engine_cache_enable"] == "1"
    assert params["trt_profile_min_shapes"] == "input_ids:1x1"
    assert params["trt_profile_opt_shapes"] == f"input_ids:4x{MAX_LEN}"
    assert params["trt_profile_max_shapes"] == f"input_ids:{cfg.max_batch_size}x{MAX_LEN}"


def test_new_versions_are_numbered_and_old_ones_untouched(tmp_path, gpt4rec_onnx):
    first = write_gpu_model(tmp_path, "gpt4rec", gpt4rec_onnx, variant="tensorrt_plan", options=OPTIONS)
    before = {f.name: f.read_bytes() for f in first.iterdir()}
    second = write_gpu_model(tmp_path, "gpt4rec", gpt4rec_onnx, variant="tensorrt_plan",
                             options=GpuProfileOptions(max_batch_size=8))
    assert (first.name, second.name) == ("1", "2")
    assert {f.name: f.read_bytes() for f in first.iterdir()} == before
    assert _parse(tmp_path / "gpt4rec" / "config.pbtxt").max_batch_size == 8


def _similar_items_like(path: Path, batch_dim: str | int = "batch") -> Path:
    """item id [batch, 1] -> top-3 of a tiny table: fixed non-batch dims, no max_len metadata."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [6, 6], np.eye(6, dtype=np.float32).ravel().tolist())
    k = helper.make_tensor("k", TensorProto.INT64, [1], [3])
    nodes = [helper.make_node("Gather", ["table", "item_id"], ["rows"], axis=0),
             helper.make_node("Squeeze", ["rows", "one"], ["scores_all"]),
             helper.make_node("TopK", ["scores_all", "k"], ["scores", "item_ids"], axis=1)]
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        nodes, "similar", [helper.make_tensor_value_info("item_id", TensorProto.INT64, [batch_dim, 1])],
        [helper.make_tensor_value_info("item_ids", TensorProto.INT64, ["batch", 3]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])], [table, k, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {"n_items": "5", "top_k": "3"})
    onnx.save(model, str(path))
    return path


def test_fixed_dims_model_needs_no_max_len(tmp_path):
    onnx_path = _similar_items_like(tmp_path / "similar.onnx")
    version_dir = write_gpu_model(tmp_path / "repo", "similar_items", onnx_path, variant="tensorrt_plan",
                                  options=OPTIONS)
    cfg = _parse(tmp_path / "repo" / "similar_items" / "config.pbtxt")
    assert [(t.name, list(t.dims)) for t in cfg.input] == [("item_id", [1])]
    spec = json.loads((version_dir / "build.json").read_text())
    assert spec["profile"] == {"item_id": {"min": [1, 1], "opt": [4, 1], "max": [32, 1]}}


def test_bad_inputs_are_refused_with_the_reason(tmp_path, gpt4rec_onnx):
    fixed_batch = _similar_items_like(tmp_path / "fixed.onnx", batch_dim=4)
    with pytest.raises(ValueError, match="'item_id'.*first dimension must be the\\s+dynamic batch"):
        read_onnx_spec(fixed_batch)
    no_meta = onnx.load(str(gpt4rec_onnx))
    del no_meta.metadata_props[:]
    onnx.save(no_meta, str(tmp_path / "no_meta.onnx"))
    with pytest.raises(ValueError, match="'input_ids' has a dynamic length.*no max_len"):
        write_gpu_model(tmp_path / "r", "gpt4rec", tmp_path / "no_meta.onnx", variant="tensorrt_plan",
                        options=OPTIONS)
    assert not list((tmp_path / "r" / "gpt4rec").iterdir()), "nothing written on refusal"
    with pytest.raises(ValueError, match="unknown GPU variant"):
        write_gpu_model(tmp_path, "gpt4rec", gpt4rec_onnx, variant="tensorrt", options=OPTIONS)
    with pytest.raises(ValueError, match="invalid model name"):
        write_gpu_model(tmp_path, "../x", gpt4rec_onnx, variant="tensorrt_plan", options=OPTIONS)
    with pytest.raises(FileNotFoundError):
        read_onnx_spec(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
    with pytest.raises(ValueError, match="junk.onnx is not a readable ONNX model"):
        read_onnx_spec(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match="max_batch_size must be a positive integer"):
        GpuProfileOptions(max_batch_size=0)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_cli_fails_clearly_without_tensorrt_and_writes_no_plan(tmp_path, gpt4rec_onnx):
    plan = tmp_path / "out" / "model.plan"
    proc = subprocess.run([sys.executable, "-m", "pipelines.gpu.tensorrt", "build", "--onnx", str(gpt4rec_onnx),
                           "--plan", str(plan), "--max-batch", "8", "--check", "--report", str(tmp_path / "r.json")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == tensorrt.EXIT_UNAVAILABLE, proc.stderr
    assert "TensorRT is not installed in this environment" in proc.stderr
    assert "infra/k8s/tensorrt-build-job.yaml" in proc.stderr and "Nothing was built" in proc.stderr
    assert not plan.exists() and not (tmp_path / "out").exists() and not (tmp_path / "r.json").exists()
    with pytest.raises(tensorrt.TensorRTUnavailable, match="build it on the GPU node"):
        tensorrt.build_engine(gpt4rec_onnx, plan, max_batch=8, max_len=MAX_LEN)
    assert not plan.exists()


def test_sampled_sessions_cover_lengths_and_are_left_padded():
    batches = tensorrt.sample_inputs(("batch", "length"), n_items=50, max_len=MAX_LEN, batch=6,
                                     rng=np.random.default_rng(0))
    widths = [b.shape[1] for b in batches]
    assert widths[0] == 1 and widths[-1] == MAX_LEN and all(b.shape[0] == 6 for b in batches)
    for b in batches:
        assert b.dtype == np.int64 and b.max() <= 50 and (b[:, -1] > 0).all()  # newest item always present
        for row in b:
            nz = np.flatnonzero(row)
            assert (nz == np.arange(nz[0], len(row))).all()  # padding only on the left


def test_build_module_imports_only_what_the_job_image_has():
    """The Job runs tensorrt.py from a ConfigMap in the TensorRT container: stdlib, numpy, the contract."""
    allowed = set(sys.stdlib_module_names) | {"numpy", "tensorrt", "onnxruntime", "nvidia", "__future__"}
    tree = ast.parse((PROJECT_ROOT / "pipelines/gpu/tensorrt.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    from_pipelines = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                      and n.module.startswith("pipelines")}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 and not n.module.startswith("pipelines")}
    assert imported <= allowed, imported - allowed
    shipped = {rel.removesuffix(".py").replace("/", ".") for rel in gpu_deploy.CODE_FILES.values()}
    assert from_pipelines <= shipped, "every rxrec module the build imports travels in the ConfigMap"


def _containers(job: dict) -> dict[str, dict]:
    pod = job["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["initContainers"] + pod["containers"]}


def test_job_manifest_runs_the_tested_module_on_the_gpu_pool():
    job = yaml.safe_load(MANIFEST.read_text())
    assert (job["apiVersion"], job["kind"], job["metadata"]["namespace"]) == ("batch/v1", "Job", "rxrec")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    settings = load_settings()
    assert pod["nodeSelector"] == {settings.gpu.gpu_node_label: settings.gpu.gpu_type}
    containers = _containers(job)
    build = containers["build-engine"]
    assert build["resources"]["limits"]["nvidia.com/gpu"] == 1 and build["image"] == settings.gpu.image
    script = " ".join(build["args"])
    assert "-m pipelines.gpu.tensorrt build" in script
    tokens = shlex.split(script.split("-m pipelines.gpu.tensorrt", 1)[1].split(";")[0])
    args = tensorrt._parser().parse_args(tokens)
    assert args.check and args.plan == Path("/work/out/model.plan") and args.build_spec == Path("/work/build.json")
    # The ConfigMap volume lays out exactly the files the module needs as an importable package.
    (code,) = [v for v in pod["volumes"] if v["name"] == "code"]
    assert {i["key"]: i["path"] for i in code["configMap"]["items"]} == gpu_deploy.CODE_FILES
    assert all((PROJECT_ROOT / rel).is_file() for rel in gpu_deploy.CODE_FILES.values())
    mounts = {m["name"]: m["mountPath"] for m in build["volumeMounts"]}
    assert {"name": "PYTHONPATH", "value": mounts["code"]} in build["env"]
    # S3 coordinates come from the shared ConfigMap and Secret; the upload puts the plan in the version folder.
    env = {e["name"]: e for e in containers["upload-plan"]["env"]}
    assert env["MODEL_REPOSITORY"]["valueFrom"]["configMapKeyRef"] == {"name": "rxrec-config",
                                                                        "key": "MODEL_REPOSITORY"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "rxrec-s3"
    upload = " ".join(containers["upload-plan"]["args"])
    assert '"$dst/model.plan"' in upload and upload.index("engine_check.json") < upload.index("model.plan\"")
    assert "model.onnx" in " ".join(containers["fetch-onnx"]["args"])


def test_render_job_fills_in_one_model_version(monkeypatch):
    s = load_settings(overrides=["gpu.gpu_type=NVIDIA-A100-SXM4-80GB", "gpu.namespace=ml"])
    job = gpu_deploy.render_job(gpu_deploy.load_job_manifest(), model_name="similar_items", version=7, s=s)
    assert job["metadata"]["name"] == "rxrec-tensorrt-build-similar-items-v7"
    assert job["metadata"]["namespace"] == "ml"
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    for container in _containers(job).values():
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if "MODEL_VERSION" in env:
            assert (env["MODEL_NAME"], env["MODEL_VERSION"]) == ("similar_items", "7")
    configmap = gpu_deploy.code_configmap("ml")
    assert configmap["data"]["tensorrt.py"] == (PROJECT_ROOT / "pipelines/gpu/tensorrt.py").read_text()
    assert yaml.safe_load(yaml.safe_dump({"kind": "List", "items": [configmap, job]}))["items"][1] == job


def test_enabled_build_without_a_cluster_fails_clearly_and_writes_nothing(tmp_path, monkeypatch, gpt4rec_onnx):
    s = load_settings(overrides=["gpu.enabled=true", "gpu.kube_context=rxrec-no-such-context"])
    paths = Paths(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(gpu_deploy.ClusterUnavailable, match="kubectl is not installed"):
        gpu_deploy.build_tensorrt_engine(s, paths)
    monkeypatch.undo()
    if gpu_deploy.shutil.which("kubectl"):
        with pytest.raises(gpu_deploy.ClusterUnavailable, match="no Kubernetes cluster is reachable.*no-such-context"):
            gpu_deploy.build_tensorrt_engine(s, paths)
    assert not (tmp_path / "artifacts").exists()


def test_upload_puts_the_version_and_config_into_the_s3_repository(tmp_path, monkeypatch, gpt4rec_onnx):
    moto = pytest.importorskip("moto")
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    version_dir = write_gpu_model(tmp_path, "gpt4rec", gpt4rec_onnx, variant="tensorrt_plan", options=OPTIONS)
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="rxrec-models")
        uploaded = gpu_deploy.upload_model(version_dir.parent, 1, "s3://rxrec-models/triton_repo")
        keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="rxrec-models")["Contents"]}
    assert keys == {"triton_repo/gpt4rec/config.pbtxt", "triton_repo/gpt4rec/1/model.onnx",
                    "triton_repo/gpt4rec/1/build.json", "triton_repo/gpt4rec/1/lineage.json"}
    assert uploaded[-1].endswith("gpt4rec/config.pbtxt"), "config goes last"
    with pytest.raises(ValueError, match="must be s3://bucket/prefix"):
        gpu_deploy.upload_model(version_dir.parent, 1, "/local/path")


def test_cli_export_writes_both_profiles(tmp_path, gpt4rec_onnx, workdir):
    from typer.testing import CliRunner

    from pipelines.cli import app

    runner = CliRunner()
    gpu = runner.invoke(app, ["export", "--profile", "gpu", "--variant", "onnxruntime_trt", "--onnx",
                              str(gpt4rec_onnx), "--out", str(tmp_path / "gpu")])
    assert gpu.exit_code == 0, gpu.output
    assert _parse(tmp_path / "gpu" / "gpt4rec" / "config.pbtxt").platform == "onnxruntime_onnx"
    cpu = runner.invoke(app, ["export", "--profile", "cpu", "--onnx", str(gpt4rec_onnx), "--out", str(tmp_path / "cpu")])
    assert cpu.exit_code == 0, cpu.output
    cfg = _parse(tmp_path / "cpu" / "gpt4rec" / "config.pbtxt")
    assert cfg.backend == "python" and (tmp_path / "cpu" / "gpt4rec" / "1" / "model.py").is_file()
    bad = runner.invoke(app, ["export", "--profile", "cpu", "--variant", "tensorrt_plan", "--onnx", str(gpt4rec_onnx)])
    assert bad.exit_code == 1 and "--variant applies to --profile gpu" in bad.output


def test_manifest_and_rendered_objects_pass_the_kubernetes_schema():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    job = gpu_deploy.load_job_manifest()
    rendered = gpu_deploy.render_job(job, model_name="gpt4rec", version=2, s=load_settings())
    for obj in (job, rendered, gpu_deploy.code_configmap("rxrec")):
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
