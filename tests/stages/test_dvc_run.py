"""The DVC runner of Airflow runs (pipelines/stages/dvc_run.py) on a scratch git+DVC repository.

Real git and DVC; the stages are one-line Python commands over the project's params.yaml, so two whole
"DAG runs" (prepare, repro per stage, record) take seconds. The second run changes one model family's
param only: the other stages are skipped, both runs' locks sit on their refs, and `dvc params diff` /
`dvc metrics diff` between the refs show exactly that change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlflow import MlflowClient
from pipelines.core.config import PROJECT_ROOT, SettingsError
from pipelines.stages import dvc_run
from pipelines.stages.dvc_run import (
    DvcRunError,
    RunWorkspace,
    apply_overrides,
    leave_out,
    parse_outcome,
    prepare,
    prune_workspaces,
    record,
    repro,
    safe_name,
    snapshot_commit,
    summarize,
)

BIN = Path(sys.executable).parent
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
# Reads one key of its params.yaml section, writes <out>/model.txt; `evaluate` sums the models into a metric.
STAGE_PY = """
import json, pathlib, sys, yaml
params = yaml.safe_load(open("params.yaml"))
kind, out = sys.argv[1], pathlib.Path(sys.argv[2])
KEY = {"data": "n_users", "mf": "factors", "ncf": "epochs"}
if kind == "evaluate":
    models = [pathlib.Path(p) / "model.txt" for p in sys.argv[3:]]
    total = sum(float(m.read_text()) for m in models if m.exists())  # a family left out has no model
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"score": total}))
else:
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.txt").write_text(str(params[kind][KEY[kind]]))
    if kind == "data":  # an uncached report, as validate writes: git keeps it, not the DVC cache
        pathlib.Path("reports/pipeline").mkdir(parents=True, exist_ok=True)
        pathlib.Path("reports/pipeline/raw.json").write_text(json.dumps({"users": params["data"]["n_users"]}))
"""
DVC_YAML = {"stages": {
    "generate": {"cmd": "python stage.py data data/raw", "deps": ["stage.py"], "params": ["data"],
                 "outs": ["data/raw"], "metrics": [{"reports/pipeline/raw.json": {"cache": False}}]},
    "train_mf": {"cmd": "python stage.py mf artifacts/models/mf", "deps": ["data/raw", "stage.py"],
                 "params": ["mf"], "outs": ["artifacts/models/mf"]},
    "train_ncf": {"cmd": "python stage.py ncf artifacts/models/ncf", "deps": ["data/raw", "stage.py"],
                  "params": ["ncf"], "outs": ["artifacts/models/ncf"]},
    "evaluate": {"cmd": "python stage.py evaluate reports/pipeline/metrics.json artifacts/models/mf "
                        "artifacts/models/ncf",
                 "deps": ["artifacts/models/mf", "artifacts/models/ncf", "stage.py"],
                 "metrics": [{"reports/pipeline/metrics.json": {"cache": False}}]},
}}
ORDER = ["generate", "train_mf", "train_ncf", "evaluate"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A committed git+DVC project: the real params.yaml and .dvc/config, a four-stage dvc.yaml."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for name in ("RXREC_WORKDIR", "RXREC_PARAMS", "RXREC_DVC_CACHE", "RXREC_DVC_REMOTE", "RXREC_MLFLOW_TRACKING_URI",
                 "RXREC_TRITON_REPO", "RXREC_RUN_CODE", "RXREC_DATA_DOCS_DIR"):
        monkeypatch.delenv(name, raising=False)
    _git(root, "init", "-q")
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    shutil.copy(PROJECT_ROOT / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    (root / "stage.py").write_text(STAGE_PY)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / ".gitignore").write_text("/data/\n/artifacts/\n/reports/\n/var/\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "scratch project")
    return root


def _dag_run(project: Path, run_id: str, overrides: list[str]) -> dict:
    ws = RunWorkspace(run_id=run_id, project=project, state=project)
    prepared = prepare(ws, overrides)
    results = {stage: repro(ws, stage) for stage in ORDER}
    return {"ws": ws, "prepared": prepared, "results": results, "summary": record(ws, results)}


def _dvc_json(project: Path, *args: str) -> dict:
    done = subprocess.run([str(BIN / "dvc"), *args, "--json"], cwd=project, check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout)


@pytest.mark.slow  # two real DVC runs of the pipeline graph
def test_two_runs_skip_what_did_not_change_and_diff_between_their_refs(project):
    status_before = _git(project, "status", "--porcelain")
    first = _dag_run(project, "manual__2026-01-01T00:00:00+00:00", [])
    assert {s: r["outcome"] for s, r in first["results"].items()} == dict.fromkeys(ORDER, "ran")
    assert first["ws"].path.parent == project / "var" / "runs"
    assert first["summary"]["pushed"]["url"].split()[0] == str(project / "var" / "dvc-remote")
    assert any((project / "var" / "dvc-remote").rglob("*")), "outputs pushed to the local remote"

    second = _dag_run(project, "manual__2026-01-02T00:00:00+00:00", ["ncf.epochs=9"])
    outcomes = {s: r["outcome"] for s, r in second["results"].items()}
    assert outcomes == {"generate": "skipped", "train_mf": "skipped", "train_ncf": "ran", "evaluate": "ran"}
    summary = second["summary"]
    assert summary["skipped"] == ["generate", "train_mf"] and summary["ran"] == ["evaluate", "train_ncf"]
    assert set(summary["seconds_saved"]) == {"generate", "train_mf"} and summary["seconds_saved_total"] >= 0
    assert second["results"]["evaluate"]["records"]["reports/pipeline/metrics.json"]["score"] > 0

    refs = _git(project, "for-each-ref", "--format=%(refname)", "refs/rxrec/runs").split()
    assert refs == [first["ws"].ref, second["ws"].ref]
    for ref in refs:
        assert "train_ncf" in yaml.safe_load(_git(project, "show", f"{ref}:dvc.lock"))["stages"]
    params = _dvc_json(project, "params", "diff", first["ws"].ref, second["ws"].ref)
    assert {f: list(v) for f, v in params.items()} == {"params.yaml": ["ncf.epochs"]}
    assert params["params.yaml"]["ncf.epochs"]["new"] == 9
    metrics = _dvc_json(project, "metrics", "diff", first["ws"].ref, second["ws"].ref)
    assert list(metrics["reports/pipeline/metrics.json"]) == ["score"]
    assert (project / "var" / "runs" / "latest").resolve() == second["ws"].path
    # The user's checkout is untouched: same status, params.yaml without the override.
    assert _git(project, "status", "--porcelain") == status_before
    assert "epochs: 9" not in (project / "params.yaml").read_text()

    # Back to the first params: the run-cache restores train_ncf's output instead of training again.
    third = _dag_run(project, "manual__2026-01-03T00:00:00+00:00", [])
    assert third["results"]["train_ncf"]["outcome"] == "restored"
    assert third["summary"]["restored_from_run_cache"] == ["evaluate", "train_ncf"]


def test_a_left_out_stage_leaves_the_workspace_and_its_consumer_runs_outside_dvc(project):
    ws = RunWorkspace(run_id="manual__left_out", project=project, state=project)
    prepare(ws, [])
    for stage in ("generate", "train_mf"):
        repro(ws, stage)
    assert leave_out(ws, "train_ncf") == ["artifacts/models/ncf"]
    for left_out in ([], ["train_mf"]):  # DVC refuses a missing dependency unless the run left its producer out
        with pytest.raises(DvcRunError, match="evaluate"):
            repro(ws, "evaluate", left_out=left_out)
    result = repro(ws, "evaluate", left_out=["train_ncf"])
    assert result["outcome"] == "ran_outside_dvc"
    mf_factors = yaml.safe_load((ws.path / "params.yaml").read_text())["mf"]["factors"]
    assert result["records"]["reports/pipeline/metrics.json"] == {"score": float(mf_factors)}


def test_workspace_seeds_the_drift_reference_and_shares_mlflow_and_triton(project):
    (project / "data").mkdir()
    (project / "data" / "accepted_profile.json").write_text('{"rows": 1}')
    ws = RunWorkspace(run_id="scheduled__x", project=project, state=project)
    prepare(ws, ["mf.factors=3"])
    assert (ws.path / "data" / "accepted_profile.json").read_text() == '{"rows": 1}'
    assert yaml.safe_load((ws.path / "params.yaml").read_text())["mf"]["factors"] == 3
    for shared in ("mlartifacts", "triton", "data_docs"):
        assert (ws.path / "var" / shared).resolve() == project / "var" / shared
    env = ws.env()
    assert env["RXREC_WORKDIR"] == str(ws.path) and env["RXREC_PARAMS"] == str(ws.path / "params.yaml")
    assert env["RXREC_MLFLOW_TRACKING_URI"] == f"sqlite:///{project / 'var' / 'mlflow.db'}"
    assert env["RXREC_TRITON_REPO"] == str(project / "triton_repo")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ws.path)
    assert f"dir = {project / '.dvc' / 'cache'}" in (ws.path / ".dvc" / "config.local").read_text()
    (ws.path / "data" / "accepted_profile.json").write_text('{"rows": 2}')
    record(ws, {}, push=False)
    assert (project / "data" / "accepted_profile.json").read_text() == '{"rows": 2}'


def test_the_first_task_opens_the_parent_run_its_stages_log_under(project):
    """The MLflow parent run opens at prepare (the DAG's first task), keyed as the stage commands key it."""
    from pipelines.track.live import current_run_key
    from pipelines.track.service import PARENT_TAG, RUN_KEY_TAG

    ws = RunWorkspace(run_id="manual__2026-12-02", project=project, state=project)
    prepare(ws, ["mf.factors=3"])
    store = f"sqlite:///{project / 'var' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{PARENT_TAG}` = 'true'")
    assert [r.data.tags[RUN_KEY_TAG] for r in runs] == ["manual__2026-12-02"]
    assert runs[0].data.params == {"override.mf.factors": "3"}
    stage_key = subprocess.run([sys.executable, "-c", ("from pipelines.track.live import current_run_key as k; "
                                "print(k())")], env=ws.env(), capture_output=True, text=True, check=True)
    assert stage_key.stdout.strip() == "manual__2026-12-02" != current_run_key()


def test_a_tracking_server_gets_no_local_artifact_folder(project, monkeypatch):
    """The stack's MLflow server keeps artifacts in S3: no var/mlartifacts in the workspace or the work dir."""
    monkeypatch.setenv("RXREC_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    opened = []  # no server here: the parent run it would open is another test's subject
    monkeypatch.setattr(dvc_run, "_open_tracking", lambda ws, overrides: opened.append(ws.run_id))
    ws = RunWorkspace(run_id="on_a_server", project=project, state=project)
    prepare(ws, [])
    assert opened == ["on_a_server"]
    assert not (ws.path / "var" / "mlartifacts").exists() and not (project / "var" / "mlartifacts").exists()
    assert (ws.path / "var" / "triton").resolve() == project / "var" / "triton"


def test_snapshot_commit_holds_uncommitted_code_without_touching_the_index(project):
    head = _git(project, "rev-parse", "HEAD").strip()
    assert snapshot_commit(project) == head
    (project / "stage.py").write_text(STAGE_PY + "# edited\n")
    (project / "new_module.py").write_text("X = 1\n")
    status = _git(project, "status", "--porcelain")
    commit = snapshot_commit(project)
    assert commit != head and _git(project, "rev-parse", f"{commit}^").strip() == head
    assert _git(project, "show", f"{commit}:new_module.py") == "X = 1\n"
    assert _git(project, "show", f"{commit}:stage.py").endswith("# edited\n")
    assert _git(project, "status", "--porcelain") == status


def test_run_code_pins_the_commit_a_run_executes(project, monkeypatch):
    head = _git(project, "rev-parse", "HEAD").strip()
    (project / "stage.py").write_text(STAGE_PY + "# edited after the pin\n")
    monkeypatch.setenv("RXREC_RUN_CODE", "HEAD")
    ws = RunWorkspace(run_id="pinned", project=project, state=project)
    assert prepare(ws, [])["code_commit"] == head
    assert (ws.path / "stage.py").read_text() == STAGE_PY
    monkeypatch.setenv("RXREC_RUN_CODE", "no-such-ref")
    with pytest.raises(DvcRunError, match="RXREC_RUN_CODE='no-such-ref' is not a commit"):
        prepare(RunWorkspace(run_id="bad", project=project, state=project), [])


def test_prune_keeps_the_newest_workspaces(project):
    workspaces = [RunWorkspace(run_id=f"run{i}", project=project, state=project) for i in range(4)]
    for i, ws in enumerate(workspaces):
        prepare(ws, [])
        os.utime(ws.path, (1_000_000 + i, 1_000_000 + i))
    removed = prune_workspaces(workspaces[-1], keep=2)
    assert sorted(removed) == ["run0", "run1"]
    assert sorted(p.name for p in (project / "var" / "runs").iterdir()) == ["run2", "run3"]
    assert "run0" not in _git(project, "worktree", "list")


def test_apply_overrides_writes_valid_values_and_names_a_bad_key(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params)
    assert apply_overrides(params, ["gpt4rec.epochs=2", "gate.promote=false"]) == {
        "gpt4rec.epochs": 2, "gate.promote": False}
    written = yaml.safe_load(params.read_text())
    assert written["gpt4rec"]["epochs"] == 2 and written["gate"]["promote"] is False
    before = params.read_text()
    with pytest.raises(SettingsError, match="gpt4rec"):
        apply_overrides(params, ["gpt4rec.epochs=-3"])
    assert params.read_text() == before


@pytest.mark.parametrize(("line", "outcome"), [
    ("Stage 'train_mf' didn't change, skipping", "skipped"),
    ("Stage 'train_mf' is cached - skipping run, checking out outputs", "restored"),
    ("Running stage 'train_mf':\n> rxrec stage train_mf", "ran"),
])
def test_parse_outcome(line, outcome):
    assert parse_outcome("train_mf", f"Verifying data sources\n{line}\nUpdating lock file 'dvc.lock'\n") == outcome


def test_parse_outcome_refuses_output_about_another_stage():
    with pytest.raises(DvcRunError, match="train_mf"):
        parse_outcome("train_mf", "Stage 'train_ncf' didn't change, skipping")


def test_safe_name_makes_run_ids_folder_and_ref_names():
    assert safe_name("manual__2026-01-01T00:00:00.123+00:00") == "manual__2026-01-01T00_00_00.123_00_00"
    assert safe_name("../x..y.lock") == "x.y"


def test_summarize_counts_what_skipped_stages_last_cost():
    results = {"a": {"outcome": "skipped", "stage_seconds": 1.0}, "b": {"outcome": "ran", "stage_seconds": 7.0},
               "c": {"outcome": "restored", "stage_seconds": 2.0}}
    summary = summarize(results, {"stage_cost_s": {"a": 10.0, "b": 5.0, "c": 4.0}})
    assert summary["seconds_saved"] == {"a": 9.0, "c": 2.0} and summary["seconds_saved_total"] == 11.0
    assert summary["stage_cost_s"] == {"a": 10.0, "b": 7.0, "c": 4.0}
    assert summary["ran"] == ["b"] and summary["skipped"] == ["a", "c"]
