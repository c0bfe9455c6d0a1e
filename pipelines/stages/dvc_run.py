"""Airflow runs of the dvc.yaml pipeline, executed THROUGH DVC in a workspace per DAG run.

Why a workspace: a DAG run must be what `dvc repro` is (unchanged stages skipped from the cache and the
run-cache, a `dvc.lock` that records params, code and data hashes), the run form's overrides must reach
the params DVC records, and the user's checkout must never be rewritten by a run. So each run gets a git
worktree of the code as it is now (a snapshot commit of the checkout, untracked files included, taken
with a private index so the checkout's index and files are untouched) under `<state>/var/runs/<run>`:

- its `params.yaml` holds the run's overrides, so `dvc.lock` records them;
- it starts from the previous run's `dvc.lock` (else the committed one) and checks out those outputs from
  the shared DVC cache, so a stage whose code, params and inputs did not change is skipped;
- its `.dvc/config.local` shares one cache (and run-cache) across runs and points relative remotes at the
  state folder (a worktree's own `../var/dvc-remote` would be private to it);
- service state stays shared: the MLflow store, the Triton repository and the validation drift reference
  (`data/accepted_profile.json`, seeded into the workspace and published back when the run ends).

Each stage runs `dvc --wait-for-lock repro --single-item STAGE` there: DVC holds its repository lock only
while it hashes and writes `dvc.lock`, not while the command runs, so parallel tasks of a run wait for
each other briefly instead of failing with "Unable to acquire lock", and two runs never share a lock.
The last task pushes the outputs to the remote (RXREC_DVC_REMOTE, else the default) and commits the run's
`dvc.lock`, `params.yaml` and metrics to `refs/rxrec/runs/<run>`, so `dvc params diff` / `dvc metrics
diff` compare two DAG runs like two experiments.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.config import PROJECT_ROOT, Paths, load_settings, parse_override
from pipelines.core.files import atomic_write_text
from pipelines.serve.triton_server import default_venv

RUNS_REF = "refs/rxrec/runs"
LATEST = "latest"  # var/runs/latest -> the workspace of the last recorded run (its outputs, for people and tools)
SUMMARY = "run_summary.json"  # committed with the lock: the next run reads what each stage last cost
CODE_ENV = "RXREC_RUN_CODE"  # a commit to run instead of a snapshot of the checkout
KEEP_ENV = "RXREC_KEEP_RUN_WORKSPACES"  # how many run workspaces stay on disk (the refs always stay)
ACCEPTED_PROFILE = Path("data") / "accepted_profile.json"
# var/ folders of service state that outlive a run's workspace: a SQLite MLflow store's artifacts, the
# local Triton's pid and ports (deploy reloads the server `make serve` or an earlier run started), Data Docs.
SHARED_VAR = ("mlartifacts", "triton", "data_docs")
GIT_IDENTITY = ["-c", "user.name=rxrec", "-c", "user.email=rxrec@localhost"]
# What `dvc repro` prints for each way a stage can end (dvc/stage/__init__.py, dvc/stage/cache.py, run.py).
OUTCOMES = {
    "skipped": "Stage '{stage}' didn't change, skipping",
    "restored": "Stage '{stage}' is cached - skipping run, checking out outputs",
    "ran": "Running stage '{stage}'",
}


class DvcRunError(RuntimeError):
    """A git or DVC command of the run failed; the message holds the command and its last lines."""


def dvc_executable() -> str:
    """The dvc of this interpreter's environment (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def run_command(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """stdout of a git or DVC command; a failure raises DvcRunError with the command and its last lines."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise DvcRunError(f"`{' '.join(args)}` in {cwd} exited {done.returncode}:\n{tail}")
    return done.stdout


def safe_name(run_id: str) -> str:
    """An Airflow run id as a folder and git ref name (`manual__2026-01-01T00:00:00+00:00` has ':' and '+')."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("._") or "run"
    return re.sub(r"\.{2,}", ".", name).removesuffix(".lock")


@dataclass(frozen=True)
class RunWorkspace:
    """Where one DAG run executes: `project` is the git+DVC checkout whose code runs, `state` holds what
    runs share (Paths().root: MLflow store, Triton repository, DVC remote and cache when not the project)."""

    run_id: str
    project: Path = PROJECT_ROOT
    state: Path | None = None

    @property
    def state_root(self) -> Path:
        return (self.state or Paths().root).resolve()

    @property
    def path(self) -> Path:
        return self.state_root / "var" / "runs" / safe_name(self.run_id)

    @property
    def ref(self) -> str:
        return f"{RUNS_REF}/{safe_name(self.run_id)}"

    @property
    def cache_dir(self) -> Path:
        """RXREC_DVC_CACHE, else the project's own cache (shared with `make demo`) when the state lives in the
        project, else one under the state folder (tests and other work directories stay apart)."""
        if os.environ.get("RXREC_DVC_CACHE"):
            return Path(os.environ["RXREC_DVC_CACHE"]).resolve()
        if self.state_root == self.project.resolve():
            return self.project.resolve() / ".dvc" / "cache"
        return self.state_root / "var" / "dvc-cache"

    def env(self) -> dict[str, str]:
        """The stage commands' environment: the workspace's code, params and outputs, the shared services."""
        state = Paths(self.state_root)
        env = dict(os.environ)
        env.update(
            RXREC_WORKDIR=str(self.path),
            RXREC_PARAMS=str(self.path / "params.yaml"),
            RXREC_TRITON_REPO=str(state.triton_repo),
            # The serving venv lives beside the project, not in the workspace (import-time default: the project).
            RXREC_TRITON_VENV=str(default_venv()),
            RXREC_MLFLOW_TRACKING_URI=os.environ.get("RXREC_MLFLOW_TRACKING_URI")
            or f"sqlite:///{state.var / 'mlflow.db'}",
            PYTHONPATH=os.pathsep.join([str(self.path), *filter(None, [os.environ.get("PYTHONPATH")])]),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        )
        # Outside Airflow the stages' `dvc repro` would key their MLflow parent run by its own pid: use the run's id.
        env.setdefault("RXREC_RUN_ID", self.run_id)
        docs = os.environ.get("RXREC_DATA_DOCS_DIR")  # relative to the work directory: keep the state's
        if docs:
            env["RXREC_DATA_DOCS_DIR"] = str(self.state_root / docs)
        return env


def snapshot_commit(project: Path) -> str:
    """A commit of the checkout as it is (tracked and untracked, .gitignore respected), parent HEAD.

    Uses a private index: the checkout's index, files and branches are not touched. HEAD itself when clean.
    """
    head = run_command(["git", "rev-parse", "HEAD"], project).strip()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        run_command(["git", "read-tree", "HEAD"], project, env)
        run_command(["git", "add", "-A", "."], project, env)
        tree = run_command(["git", "write-tree"], project, env).strip()
    if tree == run_command(["git", "rev-parse", "HEAD^{tree}"], project).strip():
        return head
    return run_command(["git", *GIT_IDENTITY, "commit-tree", tree, "-p", head, "-m",
                 "rxrec: code of an Airflow run (uncommitted changes included)"], project).strip()


def code_commit(project: Path) -> str:
    """The code a run executes: RXREC_RUN_CODE (any commit-ish: rerun old code, or pin several runs to one
    code version), else a snapshot of the checkout as it is now."""
    pinned = os.environ.get(CODE_ENV, "").strip()
    if not pinned:
        return snapshot_commit(project)
    commit = commit_in(project, pinned)
    if commit is None:
        raise DvcRunError(f"{CODE_ENV}={pinned!r} is not a commit of {project}; give a commit, tag or ref "
                          "(e.g. a run's refs/rxrec/runs/<run id>), or unset it to run the checkout's code")
    return commit


def commit_in(project: Path, ref: str) -> str | None:
    """The full hash `ref` (commit, tag, branch, run ref) names in `project`'s repository; None if it names none."""
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=project,
                          capture_output=True, text=True, check=False, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else None


def latest_run_commit(project: Path, state: Path) -> str | None:
    """The newest run ref's commit among the runs of this state folder (tests and other work directories
    record their runs in the same repository), if any."""
    commits = run_command(["git", "for-each-ref", "--sort=-committerdate", "--format=%(objectname)", RUNS_REF],
                   project).split()
    runs = str(state / "var" / "runs") + os.sep
    for commit in commits:
        summary = json.loads(_show(project, commit, SUMMARY) or "{}")
        if str(summary.get("workspace", "")).startswith(runs):
            return commit
    return None


def _show(project: Path, commit: str, path: str) -> str | None:
    done = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=project, capture_output=True, text=True,
                          check=False, timeout=60)
    return done.stdout if done.returncode == 0 else None


def apply_overrides(params_file: Path, overrides: list[str]) -> dict[str, Any]:
    """Write `section.key=value` overrides into a params file (validated first); returns what changed."""
    params = yaml.safe_load(params_file.read_text()) or {}
    changed: dict[str, Any] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        params.setdefault(section, {})[key] = value
        changed[f"{section}.{key}"] = value
    load_settings(params_file=params_file, overrides=overrides)  # raises SettingsError naming the bad key
    atomic_write_text(params_file, yaml.safe_dump(params, sort_keys=False))
    return changed


def configure_dvc(ws: RunWorkspace) -> None:
    """Shared cache; a remote folder given relative to .dvc/ (the local default) resolved under the state
    folder, as in the project, instead of inside the workspace."""
    lines = ["[cache]", f"    dir = {ws.cache_dir}"]
    config = run_command([dvc_executable(), "config", "--project", "--list"], ws.path)  # relative URLs come back resolved
    for line in config.splitlines():
        match = re.fullmatch(r"remote\.(.+)\.url=(.+)", line.strip())
        if match and "://" not in match[2] and Path(match[2]).is_relative_to(ws.path):
            url = ws.state_root / Path(match[2]).relative_to(ws.path)
            lines += [f"['remote \"{match[1]}\"']", f"    url = {url}"]
    (ws.path / ".dvc" / "config.local").write_text("\n".join(lines) + "\n")


def uncached_outs(ws: Path) -> list[str]:
    """Outs/metrics/plots with `cache: false`: git, not the DVC cache, keeps them (the run refs do)."""
    paths: list[str] = []
    for spec in (yaml.safe_load((ws / "dvc.yaml").read_text())["stages"] or {}).values():
        for kind in ("outs", "metrics", "plots"):
            paths += [p for e in spec.get(kind) or [] if isinstance(e, dict)
                      for p, o in e.items() if (o or {}).get("cache") is False]
    return paths


def _restore_uncached(ws: RunWorkspace, commit: str) -> None:
    """Put back the previous run's uncached outputs, which `dvc checkout` cannot: without them every stage
    that writes a report would count as changed."""
    for path in uncached_outs(ws.path):
        done = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ws.project, capture_output=True,
                              check=False, timeout=60)
        if done.returncode == 0:
            (ws.path / path).parent.mkdir(parents=True, exist_ok=True)
            (ws.path / path).write_bytes(done.stdout)


def prepare(ws: RunWorkspace, overrides: list[str]) -> dict[str, Any]:
    """Create the run's workspace: code snapshot, last run's lock and outputs, the run's params."""
    started = time.perf_counter()
    ws.path.parent.mkdir(parents=True, exist_ok=True)
    if ws.path.exists():  # a retried first task: start over
        remove_workspace(ws.project, ws.path)
    run_command(["git", "worktree", "prune"], ws.project)  # git forgets workspaces deleted by hand
    commit = code_commit(ws.project)
    run_command(["git", "worktree", "add", "--detach", str(ws.path), commit], ws.project)
    previous = latest_run_commit(ws.project, ws.state_root)
    lock = _show(ws.project, previous, "dvc.lock") if previous else None
    if lock is not None:
        (ws.path / "dvc.lock").write_text(lock)
    configure_dvc(ws)
    if previous:
        _restore_uncached(ws, previous)
    (ws.path / "var").mkdir(exist_ok=True)
    # A tracking server keeps the artifacts itself (S3 in the stack): no local artifact folder then.
    server_store = ws.env()["RXREC_MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    for name in SHARED_VAR:
        if name == "mlartifacts" and server_store:
            continue
        shared = Paths(ws.state_root).var / name
        shared.mkdir(parents=True, exist_ok=True)
        (ws.path / "var" / name).symlink_to(shared, target_is_directory=True)
    accepted = ws.state_root / ACCEPTED_PROFILE
    if accepted.exists():
        (ws.path / ACCEPTED_PROFILE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(accepted, ws.path / ACCEPTED_PROFILE)
    changed = apply_overrides(ws.path / "params.yaml", overrides)
    _open_tracking(ws, changed)
    # Outputs of the lock that the cache holds; the rest are made (or restored from the run-cache) by repro.
    run_command([dvc_executable(), "checkout", "--allow-missing", "--quiet"], ws.path, ws.env(), timeout=1800)
    return {"workspace": str(ws.path), "code_commit": commit, "lock_from": previous or "checkout",
            "overrides": changed, "cache": str(ws.cache_dir), "seconds": round(time.perf_counter() - started, 2)}


def _open_tracking(ws: RunWorkspace, overrides: dict[str, Any]) -> None:
    """Open the run's MLflow parent run at the first task, with the run form's overrides as its params.

    The stages find it again by the run key (pipelines/track/live.py), so every child run of this DAG run
    lands under it. A local SQLite store and its experiment are created here too: parallel tasks
    (embeddings, model families) would otherwise race to create a fresh store's tables.
    """
    from pipelines.core.retry import RetryPolicy
    from pipelines.track.lineage import git_commit
    from pipelines.track.live import RUN_ID_ENV
    from pipelines.track.service import MlflowService

    env = ws.env()
    settings = load_settings(ws.path / "params.yaml")
    uri = settings.mlflow.tracking_uri or env["RXREC_MLFLOW_TRACKING_URI"]
    artifacts = None if uri.startswith(("http://", "https://")) else Paths(ws.state_root).var / "mlartifacts"
    service = MlflowService(uri, settings.mlflow.experiment, artifacts,
                            RetryPolicy.from_settings(settings.service_retries))
    key = env.get("AIRFLOW_CTX_DAG_RUN_ID") or env[RUN_ID_ENV]
    parent = service.pipeline_run(key, f"pipeline {key}", {
        "git_commit": git_commit(ws.path), "airflow_dag_run_id": env.get("AIRFLOW_CTX_DAG_RUN_ID", "")})
    service.log_values(parent, params={f"override.{k}": v for k, v in overrides.items()})
    print(f"MLflow parent run {parent} of {key!r} open in experiment {settings.mlflow.experiment!r} ({uri})")


def parse_outcome(stage: str, output: str) -> str:
    """ran | restored (from the run-cache) | skipped (unchanged), from `dvc repro`'s output."""
    for outcome in ("ran", "restored", "skipped"):
        if OUTCOMES[outcome].format(stage=stage) in output:
            return outcome
    raise DvcRunError(f"`dvc repro` said neither that stage {stage!r} ran nor that it was skipped:\n{output[-2000:]}")


def stage_records(ws: Path, stage: str) -> dict[str, Any]:
    """The stage's small JSON records (uncached outs/metrics in dvc.yaml), e.g. register's registry.json;
    not persistent state such as the drift reference."""
    spec = _stage_spec(ws, stage)
    out: dict[str, Any] = {}
    for entry in (spec.get("outs") or []) + (spec.get("metrics") or []):
        if isinstance(entry, dict):
            for path, options in entry.items():
                options = options or {}
                if options.get("cache") is False and not options.get("persist") and path.endswith(".json") \
                        and (ws / path).is_file():
                    out[path] = json.loads((ws / path).read_text())
    return out


def _stage_spec(ws: Path, stage: str) -> dict[str, Any]:
    return (yaml.safe_load((ws / "dvc.yaml").read_text())["stages"] or {})[stage]


def _entries(entries: list | None) -> list[str]:
    """dvc.yaml deps/outs entries are either `path` or `{path: {options}}`."""
    return [str(p) for e in entries or [] for p in (e if isinstance(e, dict) else [e])]


def _outs(spec: dict[str, Any]) -> list[str]:
    return _entries(spec.get("outs")) + _entries(spec.get("metrics")) + _entries(spec.get("plots"))


def leave_out(ws: RunWorkspace, stage: str) -> list[str]:
    """A stage this run skips on purpose (a model family left out): its outputs leave the workspace, so
    nothing downstream reads a stale one."""
    outs = _outs(_stage_spec(ws.path, stage))
    for out in outs:
        target = ws.path / out
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    return outs


def repro(ws: RunWorkspace, stage: str, left_out: list[str] | None = None) -> dict[str, Any]:
    """`dvc --wait-for-lock repro --single-item STAGE` in the run's workspace; its output goes to the task log.

    DVC refuses a stage whose dependency is missing. When every missing one is an output of a stage this
    run left out (`left_out`), the stage's command runs directly in the workspace instead and the result says so: its
    `dvc.lock` entry then stays the previous one, which `dvc status` reports as changed.
    """
    spec = _stage_spec(ws.path, stage)
    missing = [d for d in _entries(spec.get("deps")) if not (ws.path / d).exists()]
    removed = [o for s in left_out or [] for o in _outs(_stage_spec(ws.path, s))]
    started = time.perf_counter()
    if missing and all(any(d == o or d.startswith(o + "/") for o in removed) for d in missing):
        print(f"{stage}: {', '.join(missing)} missing (left out: {', '.join(left_out)}); running "
              f"`{spec['cmd']}` outside DVC", flush=True)
        command = ["bash", "-c", spec["cmd"]]
    else:
        command = [dvc_executable(), "--wait-for-lock", "repro", "--single-item", stage]
    proc = subprocess.Popen(command, cwd=ws.path, env=ws.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    output = "".join(lines)
    if proc.wait() != 0:
        errors = [line.strip() for line in lines if line.startswith("ERROR")] or [line.strip() for line in lines[-5:]]
        raise DvcRunError(f"`{' '.join(command)}` in {ws.path} exited {proc.returncode}: "
                          + " | ".join(errors)[:1500])
    seconds = round(time.perf_counter() - started, 2)
    outcome = "ran_outside_dvc" if command[0] == "bash" else parse_outcome(stage, output)
    return {"stage": stage, "outcome": outcome, "stage_seconds": seconds, "records": stage_records(ws.path, stage)}


def _committed_files(ws: Path) -> list[str]:
    """dvc.lock, params.yaml and every uncached out/metric/plot that exists: what `dvc metrics/params/plots
    diff` read from a git revision (cached outs are found through the lock's hashes)."""
    files = ["dvc.lock", "params.yaml", SUMMARY, *uncached_outs(ws)]
    return [f for f in dict.fromkeys(files) if (ws / f).is_file()]


def summarize(results: dict[str, dict[str, Any]], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Stages ran / skipped, and seconds saved: what each skipped stage cost when it last ran."""
    last_cost = dict((previous or {}).get("stage_cost_s") or {})
    cost: dict[str, float] = {}
    saved: dict[str, float] = {}
    for stage, result in results.items():
        if result["outcome"] in ("ran", "ran_outside_dvc"):
            cost[stage] = result["stage_seconds"]
        elif stage in last_cost:
            cost[stage] = last_cost[stage]
            saved[stage] = round(max(0.0, last_cost[stage] - result["stage_seconds"]), 2)
    return {
        "ran": sorted(s for s, r in results.items() if r["outcome"] in ("ran", "ran_outside_dvc")),
        "ran_outside_dvc": sorted(s for s, r in results.items() if r["outcome"] == "ran_outside_dvc"),
        "skipped": sorted(s for s, r in results.items() if r["outcome"] in ("skipped", "restored")),
        "restored_from_run_cache": sorted(s for s, r in results.items() if r["outcome"] == "restored"),
        "stage_seconds": {s: r["stage_seconds"] for s, r in results.items()},
        "stage_cost_s": {**last_cost, **cost},
        "seconds_saved": saved,
        "seconds_saved_total": round(sum(saved.values()), 2),
    }


def record(ws: RunWorkspace, results: dict[str, dict[str, Any]], *, push: bool = True) -> dict[str, Any]:
    """End of a run: push outputs, publish the drift reference, commit the lock to the run's ref."""
    from pipelines.core.retry import RetryPolicy
    from pipelines.data.remote import push as dvc_push

    previous_commit = latest_run_commit(ws.project, ws.state_root)
    previous = json.loads(_show(ws.project, previous_commit, SUMMARY) or "{}") if previous_commit else None
    summary = {"run_id": ws.run_id, "workspace": str(ws.path), "ref": ws.ref, **summarize(results, previous)}
    remote = os.environ.get("RXREC_DVC_REMOTE") or run_command([dvc_executable(), "config", "core.remote"], ws.path).strip()
    if push:
        settings = load_settings(params_file=ws.path / "params.yaml")
        # COLUMNS: `dvc remote list`, which names the remote in messages, wraps a long path at 80 columns.
        pushed = dvc_push(remote, repo=ws.path, policy=RetryPolicy.from_settings(settings.service_retries),
                          env={**ws.env(), "COLUMNS": "1000"})
        summary["pushed"] = {"remote": pushed.remote, "url": pushed.url, "seconds": pushed.elapsed_s}
    accepted = ws.path / ACCEPTED_PROFILE
    if accepted.exists():
        atomic_write_text(ws.state_root / ACCEPTED_PROFILE, accepted.read_text())
    atomic_write_text(ws.path / SUMMARY, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    run_command(["git", "add", "-f", "--", *_committed_files(ws.path)], ws.path)
    run_command(["git", *GIT_IDENTITY, "commit", "-q", "--allow-empty", "-m",
          f"rxrec run {ws.run_id}: dvc.lock, params and metrics"], ws.path)
    summary["commit"] = run_command(["git", "rev-parse", "HEAD"], ws.path).strip()
    run_command(["git", "update-ref", ws.ref, summary["commit"]], ws.project)
    latest = ws.path.parent / LATEST
    staged = latest.with_name(f".{LATEST}-{os.getpid()}")
    staged.unlink(missing_ok=True)
    staged.symlink_to(ws.path.name, target_is_directory=True)
    staged.replace(latest)  # atomic: readers see the old or the new run, never no link
    summary["removed_workspaces"] = prune_workspaces(ws)
    return summary


def remove_workspace(project: Path, path: Path) -> None:
    """Drop a run's worktree (files and git's record of it); its ref and the cache stay."""
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=project, capture_output=True,
                   check=False, timeout=300)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=project, capture_output=True, check=False, timeout=60)


def prune_workspaces(ws: RunWorkspace, keep: int | None = None) -> list[str]:
    """Keep the newest `keep` run workspaces (RXREC_KEEP_RUN_WORKSPACES, default 3), this run's always."""
    keep = max(1, keep if keep is not None else int(os.environ.get(KEEP_ENV, "3")))
    runs = sorted((p for p in ws.path.parent.iterdir() if p.is_dir() and not p.is_symlink() and p != ws.path),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    removed = runs[keep - 1:]
    for path in removed:
        remove_workspace(ws.project, path)
    return [p.name for p in removed]
