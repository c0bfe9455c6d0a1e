"""Lineage facts recorded with every run and model version: code commit and data version."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml


def git_commit(root: Path, ignore: tuple[str, ...] = ()) -> str:
    """HEAD commit of the repository holding `root`, with '-dirty' when it has local changes outside the
    folders in `ignore` (relative to `root`)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        paths = ["--", ".", *(f":(exclude){folder}" for folder in ignore)] if ignore else []
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", *paths], cwd=root,
                               check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def provenance(root: Path, command: str) -> dict[str, Any]:
    """What a measured figure rests on: the code commit, the exact command and the params.yaml it read.

    Changes under reports/ do not make the commit dirty: a benchmark rewrites its own plots there
    before its report, and those are its outputs, not the code it measured.
    """
    from pipelines.core.files import file_md5

    params = root / "params.yaml"
    return {"git_commit": git_commit(root, ignore=("reports",)), "command": command,
            "params_md5": file_md5(params) if params.is_file() else None}


def provenance_line(code: dict[str, Any] | None) -> str:
    """One line for a report's markdown: the commit and command its figures come from."""
    if not code or not code.get("git_commit"):
        return f"Code: not recorded. {(code or {}).get('note', '')}".strip()
    line = (f"Code: commit `{code['git_commit']}`, command `{code['command']}`, params.yaml md5 "
            f"`{code.get('params_md5') or '-'}`.")
    if code.get("git_commit_at_write"):
        line += f" (The tree was at `{code['git_commit_at_write']}` when the report was written.)"
    return line


def content_hash(folder: Path) -> str:
    """md5 over the relative paths and bytes of every file under `folder` (order-independent)."""
    digest = hashlib.md5()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class LockReadError(RuntimeError):
    """dvc.lock never held still long enough to be read whole, or is not valid YAML."""


def read_dvc_lock(root: Path, attempts: int = 50, pause_s: float = 0.05) -> str | None:
    """dvc.lock's text read whole, or None when the pipeline did not run under DVC.

    DVC rewrites dvc.lock in place (truncate, then write) each time a stage of the run finishes, and a
    run's stages finish while others are still running and reading it. A read can land between the
    two and see nothing or half a file, which parses as no stage or not at all. So the text counts
    only once two reads `pause_s` apart agree and it parses.
    """
    lock = root / LOCK_FILE
    previous: str | None = None
    problem = "it changed between every two reads"
    for _ in range(attempts):
        if not lock.exists():
            return None
        text = lock.read_text()
        if text == previous:
            try:
                yaml.safe_load(text)
                return text
            except yaml.YAMLError as exc:
                problem = f"it is not valid YAML: {str(exc).splitlines()[0]}"
        previous = text
        time.sleep(pause_s)
    raise LockReadError(f"could not read {lock} whole in {attempts} tries ({problem}); is another process "
                        f"rewriting it, or is it damaged?")


def dvc_locked_hash(root: Path, out: str) -> str | None:
    """The md5 DVC recorded in dvc.lock for the stage output `out`, if the pipeline ran under DVC."""
    text = read_dvc_lock(root)
    if text is None:
        return None
    stages = (yaml.safe_load(text) or {}).get("stages", {})
    for stage in stages.values():
        for item in stage.get("outs", []):
            if item.get("path") == out:
                return item.get("md5")
    return None


def data_version(root: Path, folder: Path) -> dict[str, str | None]:
    """Both the DVC hash (when dvc.lock has it) and our own content hash of a data folder."""
    rel = str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)
    return {"path": rel, "dvc_md5": dvc_locked_hash(root, rel), "content_md5": content_hash(folder)}


# --------------------------------------------------------------------------- what a version is reproduced from

LINEAGE_ARTIFACT = "lineage"  # artifact folder on a registered version's run, read by `rxrec reproduce`
LOCK_FILE = "dvc.lock"  # the run's lock: params, code and data hashes of every stage that led to the model
PARAMS_FILE = "params.yaml"  # the params the run used, overrides included (no file in the work dir holds them)
FACTS_FILE = "lineage.json"  # code commit, the DVC remote, the model's training stage


def write_bundle(root: Path, out: Path, params: dict[str, dict[str, Any]], facts: dict[str, Any]) -> Path:
    """Fill `out` with what reproducing this run needs: its dvc.lock (when the pipeline ran under DVC),
    its params and the facts (`dvc_lock` says whether the lock was there)."""
    lock = read_dvc_lock(root)
    if lock is not None:
        (out / LOCK_FILE).write_text(lock)
    (out / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))
    facts = {**facts, "dvc_lock": lock is not None}
    (out / FACTS_FILE).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    return out
