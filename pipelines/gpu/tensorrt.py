"""Build a TensorRT engine (model.plan) from an exported ONNX model, on the GPU that will serve it.

An engine is specific to a GPU model and a TensorRT version, so it is built by a Kubernetes Job on
the serving node pool (infra/k8s/tensorrt-build-job.yaml) with the TensorRT release that Triton
uses, never on the training machine. This module runs inside that Job's container, where only
numpy, tensorrt and onnxruntime exist: it imports nothing else from rxrec but the tensor contract.

int64 in TensorRT (precise, since the served contract is int64):
- TensorRT >= 10 has INT64 tensors, including network inputs and outputs; older releases have
  none, so a TensorRT < 10 is refused here rather than silently narrowing ids to int32.
- The ONNX parser of TensorRT 10 imports TopK as an ITopKLayer (int32 indices) followed by a Cast
  to INT64, so `item_ids` stays int64 end to end; Gather/ScatterElements take int64 indices.
- Triton's tensorrt backend maps TYPE_INT64 to kINT64 since 24.05 (TensorRT 10), so the GPU
  config keeps the CPU profile's TYPE_INT64 / TYPE_FP32 contract unchanged.
After the build, the engine's I/O names, dtypes and ranks are compared with the ONNX graph's; any
difference fails the build.

FP16: matrix multiplies run in FP16; the masking/top-k tail (everything after the last
MatrixMultiply, which holds the -1e9 fill that FP16 cannot represent) and the normalisation layers
are pinned to FP32. `check_engine` therefore compares with ONNX Runtime with a score tolerance
that fits FP16 (near-ties may swap, anything else is a mismatch).

CLI (what the Job runs)::

    python -m pipelines.gpu.tensorrt build --onnx model.onnx --plan model.plan --check

When `import tensorrt` fails or no CUDA device is visible it says so and exits non-zero; it never
writes a plan it did not build and, with --check, never one that failed the check.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.core.contract import (
    EVENT_KINDS,
    EVENT_TYPES_NAME,
    MAX_LEN,
    N_ITEMS,
    OUTPUT_IDS,
    OUTPUT_SCORES,
    TOP_K,
    disagreeing_rows,
    left_pad,
    profile_shapes,
)
from pipelines.core.files import atomic_write_bytes

JOB_MANIFEST = "infra/k8s/tensorrt-build-job.yaml"
MIN_TENSORRT_MAJOR = 10
#: Relative score tolerance of the engine-vs-ONNX-Runtime check, by build precision.
DEFAULT_TOLERANCE = {"fp16": 2e-2, "fp32": 1e-4}
EXIT_UNAVAILABLE = 3  # TensorRT or CUDA missing: nothing was built
EXIT_CHECK_FAILED = 4  # built, but the engine disagrees with ONNX Runtime: no plan written


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA device is missing here: the engine must be built on the GPU node."""


class EngineBuildError(RuntimeError):
    """The ONNX model could not become an engine that honours the served contract."""


def _unavailable(what: str) -> TensorRTUnavailable:
    return TensorRTUnavailable(
        f"{what}. A TensorRT engine is specific to the GPU model and TensorRT version that serve it, "
        f"so build it on the GPU node: {JOB_MANIFEST} (the `build_tensorrt_engine` task of the "
        "retrain_and_promote DAG submits it when params.yaml gpu.enabled is true). Nothing was built."
    )


def import_tensorrt() -> Any:
    """The tensorrt module, or TensorRTUnavailable saying where to build instead."""
    try:
        import tensorrt as trt  # optional: only in the GPU build image
    except ImportError as exc:
        raise _unavailable(f"TensorRT is not installed in this environment ({exc})") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise _unavailable(
            f"TensorRT {trt.__version__} has no INT64 network inputs/outputs (needs >= {MIN_TENSORRT_MAJOR}); "
            "the served contract is int64 input_ids/item_ids. Use the TensorRT container of Triton 24.05 or later")
    return trt


# --------------------------------------------------------------------------- CUDA buffers (ctypes)


class CudaRuntime:
    """The few CUDA runtime calls the engine check needs, through ctypes on libcudart.

    No pycuda, cuda-python or torch is needed: the TensorRT containers and the tensorrt wheels
    (nvidia-cuda-runtime) already ship libcudart.
    """

    _HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2
    _ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76

    def __init__(self) -> None:
        self.lib = self._load()
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        count = ctypes.c_int(0)
        code = self.lib.cudaGetDeviceCount(ctypes.byref(count))
        if code != 0 or count.value < 1:
            reason = self._error(code) if code else "0 devices"
            raise _unavailable(f"No CUDA device is visible ({reason})")

    @staticmethod
    def _load() -> ctypes.CDLL:
        candidates = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.12", "libcudart.so.11.0"]
        try:  # the nvidia-cuda-runtime-cu12 wheel that the tensorrt wheels depend on
            import nvidia.cuda_runtime as wheel

            candidates += [str(p) for p in Path(next(iter(wheel.__path__)), "lib").glob("libcudart.so*")]
        except ImportError:
            pass
        for name in filter(None, candidates):
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
        raise _unavailable("The CUDA runtime (libcudart) is not installed in this environment")

    def _error(self, code: int) -> str:
        text = self.lib.cudaGetErrorString(code)
        return f"cuda error {code}: {text.decode() if text else 'unknown'}"

    def _ok(self, code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what} failed: {self._error(code)}")

    def compute_capability(self, device: int = 0) -> str:
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self._ok(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), self._ATTR_CC_MAJOR, device), "attribute")
        self._ok(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), self._ATTR_CC_MINOR, device), "attribute")
        return f"{major.value}.{minor.value}"

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._ok(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self._ok(self.lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._ok(self.lib.cudaMemcpy(ctypes.c_void_p(ptr), array.ctypes.data_as(ctypes.c_void_p),
                                     ctypes.c_size_t(array.nbytes), self._HOST_TO_DEVICE), "cudaMemcpy H2D")

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._ok(self.lib.cudaMemcpy(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(ptr),
                                     ctypes.c_size_t(array.nbytes), self._DEVICE_TO_HOST), "cudaMemcpy D2H")

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._ok(self.lib.cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        return int(handle.value or 0)

    def synchronize(self, stream: int) -> None:
        self._ok(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def destroy_stream(self, stream: int) -> None:
        self._ok(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")


def require_gpu() -> tuple[Any, CudaRuntime]:
    """tensorrt and a CUDA runtime with at least one device, or TensorRTUnavailable."""
    trt = import_tensorrt()
    return trt, CudaRuntime()


# --------------------------------------------------------------------------- ONNX facts (via ONNX Runtime)

_ORT_TO_NUMPY = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                 "tensor(float16)": np.float16, "tensor(bool)": np.bool_}
_TRT_TO_NUMPY = {"INT64": np.int64, "INT32": np.int32, "FLOAT": np.float32, "HALF": np.float16,
                 "BOOL": np.bool_, "INT8": np.int8, "UINT8": np.uint8}


@dataclass(frozen=True)
class IOSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]  # ints for fixed dims, names for dynamic ones


def onnx_io(onnx_path: Path) -> tuple[list[IOSpec], list[IOSpec], dict[str, str]]:
    """Inputs, outputs and metadata_props of an ONNX model, read with ONNX Runtime (no onnx package)."""
    session = _ort_session(onnx_path)

    def spec(arg: Any) -> IOSpec:
        if arg.type not in _ORT_TO_NUMPY:
            raise EngineBuildError(f"{onnx_path}: tensor {arg.name!r} has type {arg.type}, not supported here")
        return IOSpec(arg.name, np.dtype(_ORT_TO_NUMPY[arg.type]).name, tuple(arg.shape))

    meta = dict(session.get_modelmeta().custom_metadata_map)
    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()], meta


def _ort_session(onnx_path: Path) -> Any:
    import onnxruntime as ort  # heavy: only once TensorRT is known to exist

    options = ort.SessionOptions()
    options.intra_op_num_threads = min(4, os.cpu_count() or 1)
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildSpec:
    """What to build: written by pipelines/gpu/profile.py as build.json beside the ONNX."""

    max_batch: int
    max_len: int
    opt_batch: int = 8
    fp16: bool = True
    workspace_mib: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_len", "opt_batch", "workspace_mib"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"build spec: {name} must be a positive integer, got {value!r}")
        if self.opt_batch > self.max_batch:
            raise ValueError(f"build spec: opt_batch {self.opt_batch} exceeds max_batch {self.max_batch}")

    @classmethod
    def from_json(cls, path: Path) -> BuildSpec:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"build spec {path} cannot be read as JSON: {exc}") from exc
        fields = {k: raw[k] for k in ("max_batch", "max_len", "opt_batch", "fp16", "workspace_mib") if k in raw}
        missing = {"max_batch", "max_len"} - set(fields)
        if missing:
            raise ValueError(f"build spec {path} lacks {sorted(missing)}")
        return cls(**fields)


def _pin_fp32_tail(trt: Any, network: Any) -> int:
    """Keep the masking/top-k tail and normalisations in FP32 under an FP16 build; returns layers pinned."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    matmuls = [i for i, layer in enumerate(layers) if layer.type == trt.LayerType.MATRIX_MULTIPLY]
    tail_start = matmuls[-1] + 1 if matmuls else len(layers)
    pinned = 0
    for i, layer in enumerate(layers):
        if i < tail_start and layer.type != trt.LayerType.NORMALIZATION:
            continue
        floats = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in (trt.float32, trt.float16)]
        if not floats or layer.type in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE):
            continue
        layer.precision = trt.float32
        for j in floats:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def build_engine(onnx_path: Path, plan_path: Path, max_batch: int, max_len: int, fp16: bool = True,
                 opt_batch: int = 8, workspace_mib: int = 1024) -> dict[str, Any]:
    """Parse the ONNX model, build a serialized engine with a dynamic-shape profile, write plan_path.

    The profile covers batch 1..max_batch and every dynamic length 1..max_len (what Triton's
    config promises). The engine's I/O is checked against the ONNX graph before anything is written;
    the plan is written atomically. Returns a summary (versions, precision, I/O, seconds).
    """
    trt, cuda = require_gpu()
    spec = BuildSpec(max_batch=max_batch, max_len=max_len, opt_batch=min(opt_batch, max_batch), fp16=fp16,
                     workspace_mib=workspace_mib)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    inputs, outputs, meta = onnx_io(onnx_path)
    if MAX_LEN in meta and int(meta[MAX_LEN]) < max_len:
        raise EngineBuildError(f"max_len {max_len} exceeds the model's own max_len {meta[MAX_LEN]} "
                               f"(ONNX metadata of {onnx_path})")
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path}:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    precision = "fp32"
    pinned = 0
    if fp16:
        if not builder.platform_has_fast_fp16:
            print("warning: this GPU has no fast FP16; building an FP32 engine", file=sys.stderr)
        else:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            pinned = _pin_fp32_tail(trt, network)
            precision = "fp16"
    profile = builder.create_optimization_profile()
    shapes: dict[str, dict[str, list[int]]] = {}
    for io in inputs:
        try:
            lo, opt, hi = profile_shapes(io.shape, max_batch=spec.max_batch, opt_batch=spec.opt_batch,
                                         max_len=spec.max_len, name=io.name)
        except ValueError as exc:
            raise EngineBuildError(str(exc)) from exc
        profile.set_shape(io.name, lo, opt, hi)
        shapes[io.name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} "
                               "(see the TensorRT log above)")
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    engine_io = _engine_io(trt, engine)
    _check_engine_io(engine_io, inputs, outputs)
    atomic_write_bytes(plan_path, bytes(serialized))
    return {
        "plan": str(plan_path), "onnx": str(onnx_path), "tensorrt_version": trt.__version__,
        "compute_capability": cuda.compute_capability(), "precision": precision, "fp32_pinned_layers": pinned,
        "profile": shapes, "io": {name: asdict(io) for name, io in engine_io.items()},
        "plan_bytes": plan_path.stat().st_size, "build_seconds": round(time.perf_counter() - started, 2),
        "spec": asdict(spec),
    }


def _engine_io(trt: Any, engine: Any) -> dict[str, IOSpec]:
    out = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name).name
        if dtype not in _TRT_TO_NUMPY:
            raise EngineBuildError(f"engine tensor {name!r} has TensorRT type {dtype}, not supported here")
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        out[name] = IOSpec(f"{mode}:{name}", np.dtype(_TRT_TO_NUMPY[dtype]).name, shape)
    return out


def _check_engine_io(engine_io: dict[str, IOSpec], inputs: list[IOSpec], outputs: list[IOSpec]) -> None:
    """The engine must expose exactly the ONNX graph's tensors with the same dtypes and ranks."""
    problems = []
    expected = {io.name: ("input", io) for io in inputs} | {io.name: ("output", io) for io in outputs}
    for name, (mode, io) in expected.items():
        got = engine_io.get(name)
        if got is None:
            problems.append(f"{mode} {name!r} is missing from the engine")
        elif got.name != f"{mode}:{name}" or got.dtype != io.dtype or len(got.shape) != len(io.shape) or any(
                isinstance(want, int) and want > 0 and have != want for want, have in zip(io.shape, got.shape)):
            problems.append(f"{mode} {name!r}: engine {got.dtype}{list(got.shape)}, ONNX {io.dtype}{list(io.shape)}")
    problems += [f"unexpected engine tensor {n!r}" for n in engine_io if n not in expected]
    if problems:
        raise EngineBuildError("engine I/O differs from the ONNX model: " + "; ".join(problems))


# --------------------------------------------------------------------------- check against ONNX Runtime


@dataclass
class EngineCheckReport:
    passed: bool
    sessions: int
    shapes: list[list[int]]
    top_k: int
    mismatched_sessions: int
    exact_order_sessions: int
    max_abs_score_diff: float
    score_tolerance: float
    tensorrt_version: str
    compute_capability: str
    plan_file: str
    onnx_file: str
    examples: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), (json.dumps(asdict(self), indent=2) + "\n").encode())


def sample_inputs(shape: Sequence[int | str], n_items: int, max_len: int, batch: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Item-id batches covering every length regime: 1, max_len and some in between, left-padded."""
    if len(shape) == 1 or (len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0):
        width = shape[1] if len(shape) == 2 else None
        ids = rng.integers(1, n_items + 1, size=(batch,) if width is None else (batch, width), dtype=np.int64)
        return [ids]
    widths = sorted({1, max_len, *rng.integers(1, max_len + 1, size=3).tolist()})
    out = []
    for width in widths:
        ids = rng.integers(1, n_items + 1, size=(batch, width), dtype=np.int64)
        lengths = rng.integers(1, width + 1, size=batch)
        lengths[0] = width  # at least one full row per width
        out.append(left_pad([ids[row, width - length:] for row, length in enumerate(lengths)], width=width))
    return out


class _EngineRunner:
    """One execution context with device buffers sized per call."""

    def __init__(self, trt: Any, cuda: CudaRuntime, plan: Path) -> None:
        self.trt, self.cuda = trt, cuda
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise EngineBuildError(f"{plan} is not a TensorRT {trt.__version__} engine for this GPU")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cuda = self.trt, self.cuda
        pointers, outputs = [], {}
        stream = cuda.stream()
        try:
            for name, array in feeds.items():
                if not self.context.set_input_shape(name, tuple(array.shape)):
                    raise EngineBuildError(f"shape {array.shape} of {name!r} is outside the engine's profile")
            for name in self.names:
                dtype = _TRT_TO_NUMPY[self.engine.get_tensor_dtype(name).name]
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    host = np.ascontiguousarray(feeds[name], dtype=dtype)
                else:
                    host = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype)
                    outputs[name] = host
                ptr = cuda.malloc(host.nbytes)
                pointers.append(ptr)
                if name in feeds:
                    cuda.to_device(ptr, host)
                self.context.set_tensor_address(name, ptr)
            if not self.context.execute_async_v3(stream):
                raise EngineBuildError("TensorRT execution failed (see the TensorRT log above)")
            cuda.synchronize(stream)
            for name, host in outputs.items():
                cuda.to_host(host, pointers[self.names.index(name)])
            return outputs
        finally:
            for ptr in pointers:
                cuda.free(ptr)
            cuda.destroy_stream(stream)


def check_engine(plan_path: Path, onnx_path: Path, *, batch: int = 16, seed: int = 0,
                 tolerance: float | None = None, fp16: bool = True,
                 sessions: list[np.ndarray] | None = None) -> EngineCheckReport:
    """Run the engine and ONNX Runtime (CPU) on the same sampled sessions and compare their top-k.

    `sessions` (already left-padded batches) replace the sampled ones when given. Batches stay
    within the engine's profile (at most its max batch, lengths up to the model's max_len).
    """
    trt, cuda = require_gpu()
    inputs, outputs, meta = onnx_io(Path(onnx_path))
    names = {io.name for io in outputs}
    if not {OUTPUT_IDS, OUTPUT_SCORES} <= names:
        raise EngineBuildError(f"{onnx_path}: the check compares {OUTPUT_IDS!r}/{OUTPUT_SCORES!r}; "
                               f"the model's outputs are {sorted(names)}")
    kind_inputs = [io for io in inputs if io.name == EVENT_TYPES_NAME]  # a model trained with event kinds
    id_inputs = [io for io in inputs if io.name != EVENT_TYPES_NAME]
    if len(id_inputs) != 1:
        raise EngineBuildError(f"{onnx_path}: the check feeds one item-id input (plus {EVENT_TYPES_NAME!r}); "
                               f"the model has {[io.name for io in inputs]}")
    (source,) = id_inputs
    kind_rng = np.random.default_rng(seed + 1)
    runner = _EngineRunner(trt, cuda, Path(plan_path))
    max_batch = int(runner.engine.get_tensor_profile_shape(source.name, 0)[2][0])
    max_len = int(meta.get(MAX_LEN) or runner.engine.get_tensor_profile_shape(source.name, 0)[2][-1])
    n_items = int(meta.get(N_ITEMS) or 100)
    tolerance = DEFAULT_TOLERANCE["fp16" if fp16 else "fp32"] if tolerance is None else tolerance
    batches = sessions or sample_inputs(source.shape, n_items, max_len, min(batch, max_batch),
                                        np.random.default_rng(seed))
    ort_session = _ort_session(Path(onnx_path))
    mismatched = exact = total = 0
    max_diff, shapes, examples = 0.0, [], []
    for ids in batches:
        ids = np.asarray(ids, dtype=np.int64)
        feeds = {source.name: ids}
        if kind_inputs:  # random kinds, unknown (0) included; 0 on padding
            feeds[EVENT_TYPES_NAME] = kind_rng.integers(0, int(meta.get(EVENT_KINDS) or 4) + 1, ids.shape) * (ids != 0)
        ref_ids, ref_scores = ort_session.run([OUTPUT_IDS, OUTPUT_SCORES], feeds)
        got = runner.run(feeds)
        got_ids, got_scores = got[OUTPUT_IDS].astype(np.int64), got[OUTPUT_SCORES].astype(np.float32)
        bad = disagreeing_rows(ref_ids, ref_scores, got_ids, got_scores, tolerance)
        mismatched += int(bad.sum())
        exact += int((ref_ids == got_ids).all(axis=1).sum())
        total += len(ids)
        shapes.append(list(ids.shape))
        max_diff = max(max_diff, float(np.abs(ref_scores - got_scores).max()))
        for row in np.flatnonzero(bad)[: max(0, 3 - len(examples))]:
            examples.append({"input": ids[row].tolist(), "onnxruntime_ids": ref_ids[row].tolist(),
                             "tensorrt_ids": got_ids[row].tolist()})
    return EngineCheckReport(
        passed=mismatched == 0, sessions=total, shapes=shapes, top_k=int(meta.get(TOP_K) or ref_ids.shape[1]),
        mismatched_sessions=mismatched, exact_order_sessions=exact, max_abs_score_diff=max_diff,
        score_tolerance=tolerance, tensorrt_version=trt.__version__, compute_capability=cuda.compute_capability(),
        plan_file=str(plan_path), onnx_file=str(onnx_path), examples=examples,
    )


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.gpu.tensorrt",
                                     description="Build (and check) a TensorRT engine on the GPU node that serves it.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="ONNX -> model.plan with a dynamic-shape profile")
    build.add_argument("--onnx", type=Path, required=True, help="exported model.onnx")
    build.add_argument("--plan", type=Path, required=True, help="where model.plan goes")
    build.add_argument("--build-spec", type=Path, help="build.json written by `rxrec export --profile gpu`")
    build.add_argument("--max-batch", type=int, help="largest batch (Triton max_batch_size)")
    build.add_argument("--max-len", type=int, help="longest session (default: the ONNX metadata max_len)")
    build.add_argument("--opt-batch", type=int, help="batch size the kernels are tuned for")
    build.add_argument("--fp32", action="store_true", help="no FP16 kernels")
    build.add_argument("--workspace-mib", type=int, help="builder workspace in MiB")
    build.add_argument("--check", action="store_true", help="compare with ONNX Runtime; no plan unless it agrees")
    build.add_argument("--report", type=Path, help="write the build + check summary as JSON here")
    build.add_argument("--tolerance", type=float, help="relative score tolerance of the check")
    return parser


def _spec_from_args(args: argparse.Namespace) -> BuildSpec:
    base = BuildSpec.from_json(args.build_spec) if args.build_spec else None
    max_len = args.max_len or (base.max_len if base else None)
    if max_len is None:
        meta = onnx_io(args.onnx)[2]
        if MAX_LEN not in meta:
            raise ValueError(f"--max-len is required: {args.onnx} has no max_len metadata and no --build-spec")
        max_len = int(meta[MAX_LEN])
    max_batch = args.max_batch or (base.max_batch if base else None)
    if max_batch is None:
        raise ValueError("--max-batch is required (or --build-spec with max_batch)")
    return BuildSpec(
        max_batch=max_batch, max_len=max_len,
        opt_batch=min(args.opt_batch or (base.opt_batch if base else 8), max_batch),
        fp16=(not args.fp32) and (base.fp16 if base else True),
        workspace_mib=args.workspace_mib or (base.workspace_mib if base else 1024),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        require_gpu()  # before anything else: say plainly that this is the wrong machine
        spec = _spec_from_args(args)
        target = args.plan.with_name(f".{args.plan.name}.unchecked") if args.check else args.plan
        summary = build_engine(args.onnx, target, spec.max_batch, spec.max_len, fp16=spec.fp16,
                               opt_batch=spec.opt_batch, workspace_mib=spec.workspace_mib)
        code = 0
        if args.check:
            try:
                report = check_engine(target, args.onnx, tolerance=args.tolerance,
                                      fp16=summary["precision"] == "fp16", batch=min(16, spec.max_batch))
            except BaseException:
                target.unlink(missing_ok=True)  # an unchecked plan never stays behind
                raise
            summary["check"] = asdict(report)
            if report.passed:
                os.replace(target, args.plan)
                summary["plan"] = str(args.plan)
            else:
                target.unlink(missing_ok=True)
                summary["plan"] = None
                code = EXIT_CHECK_FAILED
                print(f"error: the engine disagrees with ONNX Runtime on {report.mismatched_sessions} of "
                      f"{report.sessions} sessions (tolerance {report.score_tolerance}); no plan written",
                      file=sys.stderr)
        if args.report:
            atomic_write_bytes(args.report, (json.dumps(summary, indent=2, default=str) + "\n").encode())
        print(json.dumps(summary, indent=2, default=str))
        return code
    except TensorRTUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (EngineBuildError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
