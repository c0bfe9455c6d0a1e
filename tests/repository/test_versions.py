"""Model-repository writing: config content, version numbering, atomic never-overwriting versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.repository import versions
from pipelines.repository.versions import (
    BACKEND_COMMON_PY,
    BACKEND_MODEL_PY,
    list_versions,
    next_version,
    write_config,
    write_version,
)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    """Stand-in bytes: the repo writer copies the file and never parses it."""
    path = tmp_path / "exported.onnx"
    path.write_bytes(b"not-really-onnx-\x00\x01\x02")
    return path


def test_config_is_a_valid_triton_model_config(tmp_path: Path) -> None:
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    path = write_config(tmp_path, "gpt4rec", max_batch_size=32, top_k=10, n_items=3000, instance_count=2)
    assert path == tmp_path / "gpt4rec" / "config.pbtxt"

    cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == "gpt4rec" and cfg.backend == "python" and cfg.max_batch_size == 32
    (inp,) = cfg.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("input_ids", model_config_pb2.TYPE_INT64, [-1])
    outs = {o.name: o for o in cfg.output}
    assert outs["item_ids"].data_type == model_config_pb2.TYPE_INT64 and list(outs["item_ids"].dims) == [10]
    assert outs["scores"].data_type == model_config_pb2.TYPE_FP32 and list(outs["scores"].dims) == [10]
    assert cfg.HasField("dynamic_batching")
    (group,) = cfg.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU and group.count == 2
    assert cfg.version_policy.latest.num_versions == 2
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {"n_items": "3000", "top_k": "10", "intra_op_num_threads": "1"}


def test_config_text_without_protobuf(tmp_path: Path) -> None:
    text = write_config(tmp_path, "m", max_batch_size=8, top_k=5, n_items=50, max_seq_len=64).read_text()
    for needle in [
        'backend: "python"',
        "max_batch_size: 8",
        "dims: [ -1 ]",
        "dims: [ 5 ]",
        "KIND_CPU",
        "num_versions: 2",
        'key: "n_items" value: { string_value: "50" }',
        'key: "max_seq_len" value: { string_value: "64" }',
        "dynamic_batching",
    ]:
        assert needle in text, needle


def test_config_rewrite_replaces_file(tmp_path: Path) -> None:
    write_config(tmp_path, "m", max_batch_size=8, top_k=5, n_items=50)
    path = write_config(tmp_path, "m", max_batch_size=8, top_k=7, n_items=60)
    assert "dims: [ 7 ]" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["config.pbtxt"]  # no temp files left


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0, "top_k": 5, "n_items": 50},
        {"max_batch_size": 8, "top_k": 0, "n_items": 50},
        {"max_batch_size": 8, "top_k": 5, "n_items": -1},
        {"max_batch_size": 8, "top_k": 5, "n_items": 50, "instance_count": 0},
    ],
)
def test_config_rejects_bad_values(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        write_config(tmp_path, "m", **kwargs)


def test_bad_model_name(tmp_path: Path, onnx_file: Path) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        write_config(tmp_path, "../escape", max_batch_size=8, top_k=5, n_items=50)
    with pytest.raises(ValueError, match="invalid model name"):
        write_version(tmp_path, "a/b", onnx_file, metadata={})


def test_version_numbering(tmp_path: Path, onnx_file: Path) -> None:
    assert list_versions(tmp_path, "m") == [] and next_version(tmp_path, "m") == 1
    assert write_version(tmp_path, "m", onnx_file, metadata={}).name == "1"
    assert write_version(tmp_path, "m", onnx_file, metadata={}).name == "2"
    # non-numeric folders (temp dirs, notes) are not versions; numbering continues after gaps
    (tmp_path / "m" / ".tmp-version-abc").mkdir()
    (tmp_path / "m" / "notes").mkdir()
    (tmp_path / "m" / "7").mkdir()
    assert list_versions(tmp_path, "m") == [1, 2, 7]
    assert next_version(tmp_path, "m") == 8
    assert write_version(tmp_path, "m", onnx_file, metadata={}).name == "8"


def test_version_contents_and_lineage(tmp_path: Path, onnx_file: Path) -> None:
    meta = {"mlflow_run_id": "abc123", "git_commit": "deadbeef", "dvc_data_hash": "md5:42", "hr@10": 0.31}
    vdir = write_version(tmp_path, "gpt4rec", onnx_file, metadata=meta)
    assert sorted(p.name for p in vdir.iterdir()) == ["lineage.json", "model.onnx", "model.py", "rxrec_backend.py"]
    assert (vdir / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert (vdir / "model.py").read_text() == BACKEND_MODEL_PY.read_text()
    assert (vdir / "rxrec_backend.py").read_text() == BACKEND_COMMON_PY.read_text()
    lineage = json.loads((vdir / "lineage.json").read_text())
    assert lineage["metadata"] == meta
    assert lineage["version"] == 1 and lineage["model_name"] == "gpt4rec"
    assert len(lineage["onnx_sha256"]) == 64 and lineage["created_at"]
    assert oct(vdir.stat().st_mode & 0o777) == oct(0o755)


def test_never_overwrites_when_number_is_taken(
    tmp_path: Path, onnx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer took the number between next_version() and the rename: use the next one."""
    first = write_version(tmp_path, "m", onnx_file, metadata={"who": "first"})
    (first / "marker").write_text("keep me")
    real = versions.next_version
    answers = iter([1])  # a stale answer, as a racing writer would see it
    monkeypatch.setattr(
        versions, "next_version", lambda repo, name: next(answers, None) or real(repo, name)
    )
    second = write_version(tmp_path, "m", onnx_file, metadata={"who": "second"})
    assert second.name == "2"
    assert (first / "marker").read_text() == "keep me"
    assert json.loads((first / "lineage.json").read_text())["metadata"] == {"who": "first"}
    assert json.loads((second / "lineage.json").read_text())["metadata"] == {"who": "second"}


def test_failed_write_leaves_nothing(
    tmp_path: Path, onnx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_version(tmp_path, "m", onnx_file, metadata={})
    real_copy = versions.shutil.copyfile

    def failing_copy(src, dst, *a, **kw):
        if Path(dst).name == "model.py":
            raise OSError("disk full")
        return real_copy(src, dst, *a, **kw)

    monkeypatch.setattr(versions.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        write_version(tmp_path, "m", onnx_file, metadata={})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]  # no partial version, no temp dir


def test_rejects_missing_onnx_and_bad_metadata(tmp_path: Path, onnx_file: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_version(tmp_path, "m", tmp_path / "missing.onnx", metadata={})
    with pytest.raises(TypeError):
        write_version(tmp_path, "m", onnx_file, metadata={"bad": object()})
    assert list_versions(tmp_path, "m") == []
