"""Atomic writes of files and stage output folders: a reader sees the old content or the new, never half."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pipelines.core import files
from pipelines.core.files import (
    atomic_write_bytes,
    atomic_write_text,
    fresh_dir,
    published_dir,
    read_json,
    write_json_atomic,
)


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- files


def test_atomic_write_replaces_the_file_readable_by_others_and_leaves_no_temp(tmp_path):
    path = tmp_path / "deep" / "config.pbtxt"  # missing parents are created
    atomic_write_text(path, "old")
    atomic_write_bytes(path, b"new \xe2\x9c\x93")
    assert path.read_text() == "new ✓"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the server may run as another user
    assert [p.name for p in path.parent.iterdir()] == ["config.pbtxt"]


def test_a_failed_atomic_write_keeps_the_old_content_and_removes_its_temp(tmp_path, monkeypatch):
    path = tmp_path / "meta.json"
    path.write_text("old")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new")
    assert _tree(tmp_path) == {"meta.json": "old"}


def test_json_round_trips_and_paths_are_written_as_text(tmp_path):
    path = tmp_path / "report.json"
    write_json_atomic(path, {"n": 3, "where": tmp_path, "items": [1, 2]})
    assert read_json(path) == {"n": 3, "where": str(tmp_path), "items": [1, 2]}
    assert path.read_text() == json.dumps(read_json(path), indent=2)


def test_a_missing_input_names_the_stage_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"meta\.json is missing: run the stage that writes it .*dvc\.yaml"):
        read_json(tmp_path / "meta.json")


def test_fresh_dir_empties_an_existing_folder_and_creates_a_missing_one(tmp_path):
    old = tmp_path / "download"
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "model.onnx").write_text("stale")
    assert fresh_dir(old) == old and list(old.iterdir()) == []
    assert fresh_dir(tmp_path / "a" / "b").is_dir()


# --------------------------------------------------------------------------- stage output folders


def test_a_stage_output_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "features"
    out.mkdir()
    (out / "meta.json").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), published_dir(out) as staging:
        (staging / "meta.json").write_text("half")
        raise RuntimeError("disk full")
    assert _tree(out) == {"meta.json": "old"} and [p.name for p in tmp_path.iterdir()] == ["features"]
    with published_dir(out) as staging:
        (staging / "sequences.parquet").write_text("new")
    assert _tree(out) == {"sequences.parquet": "new"}  # nothing of the old output mixed in
    assert [p.name for p in tmp_path.iterdir()] == ["features"]


def test_a_kill_between_the_renames_is_repaired_by_the_next_attempt(tmp_path):
    out = tmp_path / "raw"
    backup = tmp_path / ".raw.old-123"  # killed after moving the old output aside, before the new one went in
    backup.mkdir()
    (backup / "events.parquet").write_text("old")
    (tmp_path / ".raw.staging-123").mkdir()  # and the complete-or-not staging folder of that attempt
    with published_dir(out) as staging:
        assert _tree(out) == {"events.parquet": "old"}  # readers see the old output again meanwhile
        (staging / "events.parquet").write_text("new")
    assert _tree(out) == {"events.parquet": "new"} and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_a_first_output_appears_only_when_complete(tmp_path):
    out = tmp_path / "embeddings"
    with published_dir(out) as staging:
        (staging / "vectors.npy").write_text("v")
        assert not out.exists()  # nothing at the output path while it is written
        assert staging.parent == tmp_path and staging.name == f".embeddings.staging-{os.getpid()}"
    assert _tree(out) == {"vectors.npy": "v"} and [p.name for p in tmp_path.iterdir()] == ["embeddings"]


def test_an_interrupted_first_output_leaves_nothing(tmp_path):
    out = tmp_path / "embeddings"
    with pytest.raises(KeyboardInterrupt), published_dir(out) as staging:
        (staging / "vectors.npy").write_text("half")
        raise KeyboardInterrupt  # BaseException too: a task killed with SIGINT
    assert list(tmp_path.iterdir()) == []
