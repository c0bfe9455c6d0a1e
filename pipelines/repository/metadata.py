"""The one reader of a model's ONNX metadata (what export wrote into metadata_props).

Deployment, companions, the GPU repository, the promotion gate and the benchmarks all ask it, so a
missing or malformed key fails the same way everywhere, naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.core.contract import ModelMetadata


def load_onnx(onnx_path: Path) -> Any:
    """The ONNX ModelProto (external weights not loaded); FileNotFoundError / ValueError naming the path."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends, reported with the path
        raise ValueError(f"{path} is not a readable ONNX model: {exc}") from exc


def metadata_props(proto: Any) -> dict[str, str]:
    """Every metadata_props entry of a loaded ONNX model."""
    return {entry.key: entry.value for entry in proto.metadata_props}


def read_model_metadata(onnx_path: Path) -> ModelMetadata:
    """The served recommendation model's metadata; ValueError naming the file for a missing/invalid key."""
    return ModelMetadata.from_props(metadata_props(load_onnx(onnx_path)), source=str(onnx_path))
