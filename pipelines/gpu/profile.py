"""The GPU serving profile: a Triton model repository for Triton's GPU containers, written from the ONNX model.

Two variants, one per repository (a user picks one with `rxrec export --profile gpu --variant ...`):

- ``tensorrt_plan``: ``platform: "tensorrt_plan"``, KIND_GPU, expecting ``model.plan`` in each
  version folder. The plan is not built here (an engine is specific to the GPU and TensorRT
  release that serve it): the version folder holds the ``model.onnx`` to build from and a
  ``build.json`` (profile shapes, precision, expected I/O) that the Kubernetes Job
  infra/k8s/tensorrt-build-job.yaml reads; the Job adds ``model.plan`` after checking it against
  ONNX Runtime (pipelines/gpu/tensorrt.py).
- ``onnxruntime_trt``: ``platform: "onnxruntime_onnx"`` with the TensorRT execution accelerator
  (FP16, workspace, engine cache, optimization profile): no build step; ONNX Runtime builds and
  caches the engine on the node at first load, and runs what TensorRT cannot on its CUDA EP.

Every name, data type and dimension in the configs comes from the ONNX graph itself
(TYPE_INT64 / TYPE_FP32 here; TensorRT >= 10 keeps int64 I/O, see tensorrt.py), the batch
dimension becomes ``max_batch_size`` and the optimization profile covers batch
1..max_batch_size and every dynamic length 1..max_len (ONNX metadata). Configs are replaced
atomically and version folders appear complete or not at all, numbered after the highest existing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pipelines.core.contract import MAX_LEN, profile_shapes
from pipelines.core.files import atomic_write_text
from pipelines.repository.metadata import load_onnx, metadata_props
from pipelines.repository.versions import _check_name, publish_version, sha256_file

Variant = Literal["tensorrt_plan", "onnxruntime_trt"]
VARIANTS: tuple[str, ...] = ("tensorrt_plan", "onnxruntime_trt")
PLAN_FILE = "model.plan"
ONNX_FILE = "model.onnx"
BUILD_SPEC_FILE = "build.json"
LINEAGE_FILE = "lineage.json"
#: Files each version folder holds once this writer is done (model.plan is added by the build Job).
VERSION_FILES: dict[str, tuple[str, ...]] = {
    "tensorrt_plan": (ONNX_FILE, BUILD_SPEC_FILE, LINEAGE_FILE),
    "onnxruntime_trt": (ONNX_FILE, LINEAGE_FILE),
}
#: ONNX TensorProto element type -> Triton data type (the types rxrec's graphs use at their edges).
ONNX_TO_TRITON = {1: "TYPE_FP32", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16"}
BUILD_COMMAND = "python -m pipelines.gpu.tensorrt build"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton sees it: dims exclude the batch dimension (-1 = dynamic)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class OnnxModelSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict[str, str]

    @property
    def max_len(self) -> int | None:
        return int(self.metadata[MAX_LEN]) if MAX_LEN in self.metadata else None


@dataclass(frozen=True)
class GpuProfileOptions:
    """Serving knobs of the GPU configs (params.yaml `gpu:`)."""

    max_batch_size: int = 64
    opt_batch_size: int = 8
    fp16: bool = True
    workspace_mib: int = 1024
    instance_count: int = 1
    max_queue_delay_us: int = 1000
    ort_trt_cache_path: str = "/tmp/rxrec-trt-cache"
    tensorrt_image: str = "nvcr.io/nvidia/tensorrt:24.10-py3"

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "opt_batch_size", "workspace_mib", "instance_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPU profile option {name} must be a positive integer, got {value!r}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"GPU profile option max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")

    @classmethod
    def from_settings(cls, gpu: Any) -> GpuProfileOptions:
        return cls(max_batch_size=gpu.max_batch_size, opt_batch_size=min(gpu.opt_batch_size, gpu.max_batch_size),
                   fp16=gpu.fp16, workspace_mib=gpu.workspace_mib, instance_count=gpu.instance_count,
                   max_queue_delay_us=gpu.max_queue_delay_us, ort_trt_cache_path=gpu.ort_trt_cache_path,
                   tensorrt_image=gpu.image)


def read_onnx_spec(onnx_path: Path) -> OnnxModelSpec:
    """Inputs/outputs (Triton names, types, dims without batch) and metadata of an ONNX model.

    Every tensor's first dimension must be symbolic: it is the batch that Triton's dynamic batcher
    fills (max_batch_size > 0). Types outside ONNX_TO_TRITON are refused with the tensor named.
    """
    path = Path(onnx_path)
    proto = load_onnx(path)
    initializers = {t.name for t in proto.graph.initializer}

    def spec(value: Any, role: str) -> TensorSpec:
        tensor = value.type.tensor_type
        if tensor.elem_type not in ONNX_TO_TRITON:
            raise ValueError(f"{path}: {role} {value.name!r} has ONNX element type {tensor.elem_type}, "
                             f"which the GPU profile does not map (supported: {sorted(ONNX_TO_TRITON)})")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if not dims or dims[0] != -1:
            raise ValueError(f"{path}: {role} {value.name!r} has shape {dims}; its first dimension must be the "
                             "dynamic batch (export with a dynamic batch axis)")
        return TensorSpec(value.name, ONNX_TO_TRITON[tensor.elem_type], tuple(dims[1:]))

    inputs = tuple(spec(v, "input") for v in proto.graph.input if v.name not in initializers)
    outputs = tuple(spec(v, "output") for v in proto.graph.output)
    return OnnxModelSpec(inputs, outputs, metadata_props(proto))


def optimization_profile(spec: OnnxModelSpec, options: GpuProfileOptions) -> dict[str, dict[str, list[int]]]:
    """Per input: full (batch-first) min/opt/max shapes; dynamic non-batch dims span 1..max_len."""
    out: dict[str, dict[str, list[int]]] = {}
    for tensor in spec.inputs:
        shapes = profile_shapes((-1, *tensor.dims), max_batch=options.max_batch_size,
                                opt_batch=options.opt_batch_size, max_len=spec.max_len, name=tensor.name)
        out[tensor.name] = {which: list(shape) for which, shape in zip(("min", "opt", "max"), shapes)}
    return out


# --------------------------------------------------------------------------- config text


def _tensor_block(kind: str, tensors: tuple[TensorSpec, ...]) -> str:
    items = ",\n".join(
        f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {", ".join(map(str, t.dims))} ]\n  }}'
        for t in tensors)
    return f"{kind} [\n{items}\n]"


def _common(model_name: str, spec: OnnxModelSpec, options: GpuProfileOptions, head: str) -> str:
    return f"""# Written by pipelines/gpu/profile.py from the ONNX graph; regenerate rather than edit by hand.
name: "{model_name}"
{head}
max_batch_size: {options.max_batch_size}
{_tensor_block("input", spec.inputs)}
{_tensor_block("output", spec.outputs)}
dynamic_batching {{
  max_queue_delay_microseconds: {options.max_queue_delay_us}
}}
version_policy: {{ latest: {{ num_versions: 2 }} }}
"""


def plan_config_text(model_name: str, spec: OnnxModelSpec, options: GpuProfileOptions) -> str:
    """config.pbtxt of the tensorrt_plan variant: the engine's profile 0 serves every instance."""
    return _common(model_name, spec, options, f'platform: "tensorrt_plan"\ndefault_model_filename: "{PLAN_FILE}"') + f"""\
instance_group [
  {{
    count: {options.instance_count}
    kind: KIND_GPU
    profile: [ "0" ]
  }}
]
"""


def ort_trt_config_text(model_name: str, spec: OnnxModelSpec, options: GpuProfileOptions) -> str:
    """config.pbtxt of the onnxruntime_trt variant: ONNX Runtime with the TensorRT accelerator."""
    shapes = optimization_profile(spec, options)

    def joined(which: str) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, s[which]))}" for name, s in shapes.items())

    params = {
        "precision_mode": "FP16" if options.fp16 else "FP32",
        "max_workspace_size_bytes": str(options.workspace_mib << 20),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{options.ort_trt_cache_path.rstrip('/')}/{model_name}",
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": f"{options.ort_trt_cache_path.rstrip('/')}/{model_name}",
        "trt_layer_norm_fp32_fallback": "1",
        "trt_profile_min_shapes": joined("min"),
        "trt_profile_opt_shapes": joined("opt"),
        "trt_profile_max_shapes": joined("max"),
    }
    lines = "\n".join(f'        parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items())
    return _common(model_name, spec, options, f'platform: "onnxruntime_onnx"\ndefault_model_filename: "{ONNX_FILE}"') \
        + f"""instance_group [
  {{
    count: {options.instance_count}
    kind: KIND_GPU
  }}
]
optimization {{
  execution_accelerators {{
    gpu_execution_accelerator: [
      {{
        name: "tensorrt"
{lines}
      }}
    ]
  }}
}}
"""


def build_spec(spec: OnnxModelSpec, options: GpuProfileOptions, onnx_sha256: str) -> dict[str, Any]:
    """build.json: what the build Job must produce for this version (read by tensorrt.py --build-spec)."""
    shapes = optimization_profile(spec, options)  # refuses dynamic lengths without max_len metadata
    return {
        "max_batch": options.max_batch_size, "max_len": spec.max_len or 1,
        "opt_batch": min(options.opt_batch_size, options.max_batch_size), "fp16": options.fp16,
        "workspace_mib": options.workspace_mib, "profile": shapes,
        "onnx_sha256": onnx_sha256, "plan_file": PLAN_FILE, "image": options.tensorrt_image,
        "command": f"{BUILD_COMMAND} --onnx {ONNX_FILE} --plan {PLAN_FILE} --build-spec {BUILD_SPEC_FILE} --check",
        "inputs": [asdict(t) for t in spec.inputs], "outputs": [asdict(t) for t in spec.outputs],
    }


# --------------------------------------------------------------------------- writing


def write_gpu_model(repo: Path, model_name: str, onnx_path: Path, *, variant: Variant,
                    options: GpuProfileOptions, metadata: dict[str, Any] | None = None) -> Path:
    """Write repo/model_name/config.pbtxt for `variant` and a new complete version folder; return the folder.

    The folder is assembled under a hidden name inside the model folder and renamed into place;
    existing versions are never touched (if another writer takes a number first, the next is used).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown GPU variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    _check_name(model_name)
    spec = read_onnx_spec(onnx_path)
    json.dumps(metadata or {})  # fail before writing anything if metadata is not serialisable
    text = (plan_config_text if variant == "tensorrt_plan" else ort_trt_config_text)(model_name, spec, options)

    def fill(folder: Path) -> dict[str, Any]:
        shutil.copyfile(onnx_path, folder / ONNX_FILE)
        sha = sha256_file(folder / ONNX_FILE)
        if variant == "tensorrt_plan":
            (folder / BUILD_SPEC_FILE).write_text(json.dumps(build_spec(spec, options, sha), indent=2) + "\n")
        return {"profile": "gpu", "variant": variant, "onnx_sha256": sha,
                "source_onnx": str(Path(onnx_path).resolve()), "metadata": metadata or {}}

    target = publish_version(repo, model_name, fill)
    atomic_write_text(target.parent / "config.pbtxt", text)  # after the version: never a config without one
    return target


def latest_version_onnx(repo: Path, model_name: str) -> Path | None:
    """model.onnx of the newest version folder of repo/model_name, if any."""
    model_dir = Path(repo) / model_name
    versions = sorted((int(p.name) for p in model_dir.glob("[0-9]*") if p.name.isdigit()), reverse=True)
    for version in versions:
        candidate = model_dir / str(version) / ONNX_FILE
        if candidate.is_file():
            return candidate
    return None


def write_gpu_repository(out: Path, models: dict[str, Path], *, variant: Variant, options: GpuProfileOptions,
                         metadata: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write every model of `models` (name -> ONNX path) into the GPU repository `out`; returns a summary."""
    if not models:
        raise ValueError("no models to write into the GPU repository")
    written = {name: str(write_gpu_model(out, name, path, variant=variant, options=options,
                                         metadata=(metadata or {}).get(name)))
               for name, path in models.items()}
    pending = [f"{p}/{PLAN_FILE}" for p in written.values()] if variant == "tensorrt_plan" else []
    return {"repository": str(out), "variant": variant, "versions": written, "pending_plans": pending}
