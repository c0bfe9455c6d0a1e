"""Lineage facts: the code commit (dirty or not) and the data version (DVC's md5 and our own content hash)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.track.lineage import LockReadError, content_hash, data_version, dvc_locked_hash, git_commit


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_commit_is_marked_dirty_by_a_tracked_change_only(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    _git(tmp_path, "add", "params.yaml")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "scratch.txt").write_text("untracked files do not count")
    assert git_commit(tmp_path) == head
    (tmp_path / "params.yaml").write_text("a: 2\n")
    assert git_commit(tmp_path) == f"{head}-dirty"


def test_a_reports_own_outputs_do_not_make_its_code_dirty(tmp_path):
    """A benchmark rewrites its tracked plot under reports/ before it records the commit it measured."""
    from pipelines.track.lineage import provenance

    _git(tmp_path, "init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "quality.png").write_bytes(b"old")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "reports" / "quality.png").write_bytes(b"new")
    assert provenance(tmp_path, "rxrec bench quality")["git_commit"] == head
    assert git_commit(tmp_path) == f"{head}-dirty"  # lineage of a model still counts every change
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance(tmp_path, "rxrec bench quality")["git_commit"] == f"{head}-dirty"


def test_commit_outside_a_repository_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_content_hash_depends_on_names_and_bytes_not_on_write_order(tmp_path):
    files = {"events.parquet": b"e", "meta/world.json": b"{}"}
    first = content_hash(_folder(tmp_path / "a", files))
    assert content_hash(_folder(tmp_path / "b", dict(reversed(files.items())))) == first
    assert content_hash(_folder(tmp_path / "c", {**files, "events.parquet": b"E"})) != first
    assert content_hash(_folder(tmp_path / "d", {"events2.parquet": b"e", "meta/world.json": b"{}"})) != first
    (tmp_path / "a" / "empty").mkdir()
    assert content_hash(tmp_path / "a") == first  # folders alone are not content


def _lock(root: Path) -> None:
    stages = {"generate": {"cmd": "rxrec stage generate", "outs": [{"path": "data/raw", "md5": "abc.dir"}]},
              "sequences": {"cmd": "rxrec stage sequences", "outs": [{"path": "data/features", "md5": "def.dir"}]}}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))


def test_dvc_hash_of_an_output_from_dvc_lock(tmp_path):
    assert dvc_locked_hash(tmp_path, "data/raw") is None  # the pipeline did not run under DVC
    _lock(tmp_path)
    assert dvc_locked_hash(tmp_path, "data/features") == "def.dir"
    assert dvc_locked_hash(tmp_path, "data/other") is None
    (tmp_path / "dvc.lock").write_text("")
    assert dvc_locked_hash(tmp_path, "data/raw") is None


def test_a_lock_read_mid_rewrite_waits_for_the_whole_file(tmp_path, monkeypatch):
    """DVC truncates then writes dvc.lock while a run's other stages read it: an empty or torn read must
    not pass for 'no such stage' (which drops the data version) or stop the stage (as it once did)."""
    _lock(tmp_path)
    whole = (tmp_path / "dvc.lock").read_text()
    reads = iter(["", whole[: len(whole) // 2] + '\n  x: "', whole, whole])
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: next(reads))
    assert dvc_locked_hash(tmp_path, "data/features") == "def.dir"


def test_a_damaged_lock_is_named_not_read_as_empty(tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.track.lineage.time.sleep", lambda _s: None)
    (tmp_path / "dvc.lock").write_text("stages:\n  a: [\n")
    with pytest.raises(LockReadError, match="dvc.lock.*not valid YAML"):
        dvc_locked_hash(tmp_path, "data/raw")


def test_data_version_carries_both_hashes(tmp_path):
    root = tmp_path / "repo"
    raw = _folder(root / "data" / "raw", {"events.parquet": b"e"})
    _lock(root)
    assert data_version(root, raw) == {"path": "data/raw", "dvc_md5": "abc.dir", "content_md5": content_hash(raw)}
    outside = _folder(tmp_path / "elsewhere", {"x": b"1"})
    assert data_version(root, outside) == {"path": str(outside), "dvc_md5": None, "content_md5": content_hash(outside)}
