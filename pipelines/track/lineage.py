"""Lineage facts recorded with every run and model version: code commit and data version."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml


def git_commit(root: Path) -> str:
    """HEAD commit of the repository holding `root`, with '-dirty' when it has local changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, check=False,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def content_hash(folder: Path) -> str:
    """md5 over the relative paths and bytes of every file under `folder` (order-independent)."""
    digest = hashlib.md5()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def dvc_locked_hash(root: Path, out: str) -> str | None:
    """The md5 DVC recorded in dvc.lock for the stage output `out`, if the pipeline ran under DVC."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for item in stage.get("outs", []):
            if item.get("path") == out:
                return item.get("md5")
    return None


def data_version(root: Path, folder: Path) -> dict[str, str | None]:
    """Both the DVC hash (when dvc.lock has it) and our own content hash of a data folder."""
    rel = str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)
    return {"path": rel, "dvc_md5": dvc_locked_hash(root, rel), "content_md5": content_hash(folder)}
