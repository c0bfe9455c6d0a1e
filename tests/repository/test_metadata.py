"""The one reader of a model's ONNX metadata, and the config written from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper, save

from pipelines.core.contract import ModelMetadata
from pipelines.repository.metadata import load_onnx, metadata_props, read_model_metadata
from pipelines.repository.versions import write_model_config


def _onnx_with(path: Path, props: dict[str, str]) -> Path:
    """A one-node graph (Identity) carrying `props` as metadata_props."""
    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"])
    y = helper.make_tensor_value_info("item_ids", TensorProto.INT64, ["batch", "length"])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["input_ids"], ["item_ids"])],
                                                "g", [x], [y]))
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    save(model, str(path))
    return path


def test_reads_what_export_writes(tmp_path: Path) -> None:
    meta = ModelMetadata(n_items=120, max_len=20, top_k=10, event_kinds=4)
    path = _onnx_with(tmp_path / "m.onnx", meta.to_props() | {"method": "prod2vec"})
    assert read_model_metadata(path) == meta
    assert metadata_props(load_onnx(path))["method"] == "prod2vec"  # other keys stay readable


def test_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = _onnx_with(tmp_path / "old.onnx", {"n_items": "120", "top_k": "10"})
    with pytest.raises(ValueError, match=r"old\.onnx lacks ONNX metadata 'max_len'"):
        read_model_metadata(path)
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx at all")
    with pytest.raises(ValueError, match=r"junk\.onnx is not a readable ONNX model"):
        read_model_metadata(tmp_path / "junk.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        read_model_metadata(tmp_path / "missing.onnx")


@pytest.mark.parametrize("event_kinds", [0, 4])
def test_config_from_metadata_carries_every_shape_fact(tmp_path: Path, event_kinds: int) -> None:
    meta = ModelMetadata(n_items=50, max_len=64, top_k=5, event_kinds=event_kinds)
    text = write_model_config(tmp_path, "gpt4rec", meta, max_batch_size=8, instance_count=2).read_text()
    for needle in ['key: "n_items" value: { string_value: "50" }', 'key: "top_k" value: { string_value: "5" }',
                   'key: "max_seq_len" value: { string_value: "64" }', "dims: [ 5 ]", "max_batch_size: 8",
                   "count: 2"]:
        assert needle in text, needle
    assert ('name: "event_types"' in text) == bool(event_kinds)
    assert ('key: "event_kinds" value: { string_value: "4" }' in text) == bool(event_kinds)
