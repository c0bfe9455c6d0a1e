"""Integrity check and rollback of a Triton model repository (`rxrec serve check`, `rxrec serve rollback`).

Why: a crash, a killed deploy or a hand edit must never leave Triton loading a half-written or
tampered version, and a bad or stale newest version must be reversible while the server answers.

- `check_repository` walks every model folder: each numbered version folder must hold the files its
  lineage.json lists, with the same sha256 (gpt4rec: ``onnx_sha256`` of model.onnx; the companion
  models: ``files``), plus model.py, and its lineage version must equal the folder name. Temp
  folders of a write killed half-way (``.tmp-version-*``, never loaded by Triton: not a number)
  are named as such. `quarantine` renames broken numbered folders aside so Triton never loads them.
- `rollback` never rewrites a folder: it copies the chosen earlier version's files into a new,
  higher-numbered folder (written atomically by pipelines/export/triton_models.write_model_version),
  so Triton's "latest" policy serves it and a running server swaps to it on a plain load, while
  the bad version stays on disk for inspection.

Pure functions of the filesystem; no Triton or MLflow import.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.repository.versions import _TMP_PREFIX, abandoned_tmp_folders, list_versions, sha256_file

LINEAGE = "lineage.json"


@dataclass(frozen=True)
class RepoProblem:
    """One thing wrong in the repository: which model, which folder, what, and what to do."""

    model: str
    path: str
    problem: str


@dataclass
class RepoCheck:
    """What check_repository found."""

    repo: str
    versions: dict[str, list[int]] = field(default_factory=dict)
    problems: list[RepoProblem] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)  # temp folders of a writer still alive

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "ok": self.ok, "versions": self.versions,
                "problems": [asdict(p) for p in self.problems], "in_progress": self.in_progress}

    def summary(self) -> str:
        if self.ok:
            counts = ", ".join(f"{m} {len(v)}" for m, v in self.versions.items()) or "no models"
            return f"{self.repo}: intact ({counts} version folders)"
        lines = [f"{self.repo}: {len(self.problems)} problem(s)"]
        lines += [f"  {p.path}: {p.problem}" for p in self.problems]
        return "\n".join(lines)


def _model_dirs(repo: Path) -> list[Path]:
    return sorted(d for d in repo.iterdir() if d.is_dir() and (d / "config.pbtxt").is_file()) if repo.is_dir() else []


def _backend(model_dir: Path) -> str:
    """The backend named in config.pbtxt ("python" for the CPU serving repository), "" if none."""
    match = re.search(r'^\s*backend:\s*"([^"]+)"', (model_dir / "config.pbtxt").read_text(errors="replace")
                      if (model_dir / "config.pbtxt").is_file() else "", re.MULTILINE)
    return match.group(1) if match else ""


def version_problems(version_dir: Path) -> list[str]:
    """What is wrong with one version folder ([] when it is complete and matches its lineage)."""
    version_dir = Path(version_dir)
    lineage_file = version_dir / LINEAGE
    if not lineage_file.is_file():
        return [(f"no {LINEAGE}: not written by rxrec's atomic writer (an interrupted or manual copy); "
                 "move it aside with `rxrec serve check --quarantine` or roll back")]
    try:
        lineage = json.loads(lineage_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{LINEAGE} is unreadable ({exc}); the folder cannot be trusted"]
    problems = []
    if str(lineage.get("version")) != version_dir.name:
        problems.append(f"{LINEAGE} says version {lineage.get('version')!r}, the folder is {version_dir.name!r}: "
                        "a folder copied or renamed by hand")
    python_backend = _backend(version_dir.parent) == "python"
    expected: dict[str, str] = dict(lineage.get("files") or {})
    if "onnx_sha256" in lineage and (python_backend or (version_dir / "model.onnx").exists()):
        expected["model.onnx"] = lineage["onnx_sha256"]  # GPU (TensorRT) folders hold model.plan instead
    if not expected and python_backend:
        problems.append(f"{LINEAGE} lists no file checksums: cannot verify the folder")
    for name in sorted(set(expected) | ({"model.py"} if python_backend else set())):
        path = version_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif name in expected and sha256_file(path) != expected[name]:
            problems.append(f"{name} does not match the sha256 in {LINEAGE} (changed after it was written)")
    return problems


def check_repository(repo: Path) -> RepoCheck:
    """Check every model folder of a Triton repository (see the module docstring)."""
    repo = Path(repo)
    report = RepoCheck(repo=str(repo))
    if not repo.is_dir():
        report.problems.append(RepoProblem("", str(repo), "the model repository does not exist"))
        return report
    for model_dir in _model_dirs(repo):
        model = model_dir.name
        report.versions[model] = list_versions(repo, model)
        for version in report.versions[model]:
            for problem in version_problems(model_dir / str(version)):
                report.problems.append(RepoProblem(model, str(model_dir / str(version)), problem))
        abandoned = set(abandoned_tmp_folders(model_dir))
        for tmp in sorted(model_dir.glob(_TMP_PREFIX + "*")):
            if tmp in abandoned:
                report.problems.append(RepoProblem(model, str(tmp), (
                    "temp folder of a version write that was killed half-way (never loaded by Triton); "
                    "the next write of this model removes it")))
            else:
                report.in_progress.append(str(tmp))
    return report


QUARANTINE_PREFIX = ".quarantine-"


def quarantine(check: RepoCheck) -> list[str]:
    """Move every numbered version folder with a problem aside (renamed, never deleted); return new paths.

    The new name (``.quarantine-<version>-<time>``) is not a number, so Triton never loads it, and the
    version number stays taken by nothing: the next write reuses the lowest free number above the rest.
    """
    import time

    moved: list[str] = []
    for path in sorted({Path(x.path) for x in check.problems}):
        if not path.name.isdigit() or not path.is_dir():
            continue
        target = path.with_name(f"{QUARANTINE_PREFIX}{path.name}-{time.strftime('%Y%m%dT%H%M%S')}")
        path.rename(target)
        moved.append(str(target))
    return moved


def snapshot(repo: Path) -> dict[str, str]:
    """sha256 of every file in every numbered version folder, by path relative to repo.

    Two snapshots are equal exactly when no version folder was added, removed or changed.
    """
    repo = Path(repo)
    out: dict[str, str] = {}
    for model_dir in _model_dirs(repo):
        for version in list_versions(repo, model_dir.name):
            for path in sorted((model_dir / str(version)).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:  # the Python backend writes .pyc there
                    out[str(path.relative_to(repo))] = sha256_file(path)
    return out


def _served_files(version_dir: Path) -> dict[str, Path]:
    """The files a version folder serves (everything but lineage.json), by name."""
    return {p.name: p for p in sorted(version_dir.iterdir()) if p.is_file() and p.name != LINEAGE}


def _content_key(version_dir: Path) -> dict[str, str]:
    """sha256 of each served file: equal keys mean the same model."""
    return {name: sha256_file(path) for name, path in _served_files(version_dir).items()}


def _rollback_target(repo: Path, model_name: str, to_version: int | None) -> tuple[int, int]:
    """(the newest version, the version to serve again); ValueError when there is none to go back to."""
    model_dir = repo / model_name
    versions = list_versions(repo, model_name)
    if len(versions) < 2:
        raise ValueError(f"{model_dir}: {len(versions)} version folder(s), nothing earlier to roll back to")
    current = versions[-1]
    if to_version is not None:
        if to_version not in versions[:-1]:
            raise ValueError(f"{model_dir}: version {to_version} is not an earlier version; choose one of "
                             f"{versions[:-1]}")
        problems = version_problems(model_dir / str(to_version))
        if problems:
            raise ValueError(f"{model_dir / str(to_version)} fails the integrity check: {'; '.join(problems)}")
        return current, to_version
    current_key = _content_key(model_dir / str(current))
    candidates = [v for v in reversed(versions[:-1]) if not version_problems(model_dir / str(v))
                  and _content_key(model_dir / str(v)) != current_key]
    if not candidates:
        raise ValueError(f"{model_dir}: no earlier version is intact and different from version {current}; "
                         "pass --to to choose one")
    return current, candidates[0]


def scorer_pairing(repo: Path, model_name: str, to_version: int | None) -> tuple[str, int] | None:
    """When rolling `model_name` back to `to_version` must roll back an entry point that scores with its own copy
    of that model (recommend with gpt4rec.onnx, serve.recommend_scoring: in_process): (that entry point, its
    version holding the restored model). None when no entry point scores with a copy of it. ValueError, before
    anything is written, when none of the entry point's versions holds the model to restore."""
    from pipelines.repository.models import RECOMMEND, SCORER_FILE

    repo = Path(repo)
    entries = list_versions(repo, RECOMMEND)
    if not entries or not (repo / RECOMMEND / str(entries[-1]) / SCORER_FILE).is_file():
        return None
    newest = sha256_file(repo / RECOMMEND / str(entries[-1]) / SCORER_FILE)
    if newest != sha256_file(repo / model_name / str(list_versions(repo, model_name)[-1]) / "model.onnx"):
        return None  # recommend's copy is not of this model's newest version: rolling this one back leaves it
    _, target = _rollback_target(repo, model_name, to_version)
    wanted = sha256_file(repo / model_name / str(target) / "model.onnx")
    if wanted == newest:
        return None
    for version in reversed(entries):
        folder = repo / RECOMMEND / str(version)
        if (folder / SCORER_FILE).is_file() and sha256_file(folder / SCORER_FILE) == wanted \
                and not version_problems(folder):
            return RECOMMEND, version
    raise ValueError(f"{repo / RECOMMEND} scores with its own copy of {model_name}'s model, and none of its "
                     f"versions {entries} holds version {target}'s: nothing was rolled back. Move the registry "
                     "back with `rxrec promote --rollback` (it redeploys both)")


def rollback(repo: Path, model_name: str, *, to_version: int | None = None, reason: str = "") -> dict[str, Any]:
    """Serve an earlier version again: copy its files into a new version folder; return what was done.

    ``to_version`` None: the newest earlier version that passes the integrity check and whose files
    differ from the newest one's (a rollback that changes nothing is refused). No folder is modified
    or removed; the new folder's lineage.json keeps the restored version's metadata and says
    ``rollback_of`` (the version it replaces) and ``restored_from``. ValueError says why when there is
    nothing to roll back to.
    """
    from pipelines.repository.models import write_model_version

    repo = Path(repo)
    model_dir = repo / model_name
    current, target = _rollback_target(repo, model_name, to_version)
    source = model_dir / str(target)
    lineage = json.loads((source / LINEAGE).read_text())
    files = _served_files(source)
    metadata = {**dict(lineage.get("metadata") or {}), "rollback_of": current, "restored_from": target,
                "rollback_reason": reason}
    written = write_model_version(repo, model_name, files, metadata=metadata)
    return {"model": model_name, "rolled_back": current, "restored_from": target, "new_version": written.version,
            "path": str(written.path)}


__all__ = ["RepoCheck", "RepoProblem", "check_repository", "quarantine", "rollback", "scorer_pairing", "snapshot",
           "version_problems"]
