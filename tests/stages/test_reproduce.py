"""`rxrec reproduce`: the pure parts (lock, hashes, tolerance), then the demo's champion end to end.

The scenario is `make demo` on the tiny world: a scratch git repository holding a commit of this
project's code, `dvc repro register` there (real DVC, MLflow SQLite store, the gate promotes the first
version to champion; no Triton: latency check off), `dvc push` to the local remote. Then
`rxrec reproduce gpt4rec@champion` restores, re-runs and compares; a tampered remote object is
reported as a hash mismatch; bad input gives one error line and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.core.config import PROJECT_ROOT
from pipelines.stages.dvc_run import apply_overrides
from pipelines.stages.reproduce import (
    FileDiff,
    MetricCheck,
    OutCheck,
    Report,
    ReproduceError,
    check_out,
    compare_metrics,
    dir_entries,
    entries_md5,
    file_diffs,
    params_conflicts,
    parse_lock,
    parse_target,
    stages_up_to,
)
from tests.conftest import TINY

BIN = Path(sys.executable).parent
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]

LOCK = """schema: '2.0'
stages:
  generate:
    cmd: rxrec stage generate
    deps:
    - path: pipelines/data
      hash: md5
      md5: 11111111111111111111111111111111.dir
    params:
      params.yaml:
        data:
          seed: 42
    outs:
    - path: data/raw
      hash: md5
      md5: 22222222222222222222222222222222.dir
  sequences:
    cmd: rxrec stage sequences
    deps:
    - path: data/raw
      hash: md5
      md5: 22222222222222222222222222222222.dir
    outs:
    - path: data/features
      hash: md5
      md5: 33333333333333333333333333333333.dir
  train_mf:
    cmd: rxrec stage train_mf
    deps:
    - path: data/features
      hash: md5
      md5: 33333333333333333333333333333333.dir
    params:
      params.yaml:
        mf:
          factors: 32
    outs:
    - path: artifacts/models/mf
      hash: md5
      md5: 44444444444444444444444444444444.dir
  prod2vec:
    cmd: rxrec stage prod2vec
    deps:
    - path: data/features/items.parquet
      hash: md5
      md5: 55555555555555555555555555555555
    outs:
    - path: artifacts/embeddings/prod2vec
      hash: md5
      md5: 66666666666666666666666666666666.dir
  train_gpt4rec:
    cmd: rxrec stage train_gpt4rec
    deps:
    - path: artifacts/embeddings/prod2vec
      hash: md5
      md5: 66666666666666666666666666666666.dir
    - path: data/features
      hash: md5
      md5: 33333333333333333333333333333333.dir
    params:
      params.yaml:
        gpt4rec:
          dim: 32
          lr: 0.003
    outs:
    - path: artifacts/models/gpt4rec
      hash: md5
      md5: 77777777777777777777777777777777.dir
"""


# --------------------------------------------------------------------------- the pure parts


def test_parse_lock_reads_hashes_and_params_in_order():
    stages = parse_lock(LOCK, "test lock")
    assert list(stages) == ["generate", "sequences", "train_mf", "prod2vec", "train_gpt4rec"]
    assert stages["train_gpt4rec"].params == {"gpt4rec": {"dim": 32, "lr": 0.003}}
    assert stages["generate"].outs == {"data/raw": "22222222222222222222222222222222.dir"}


@pytest.mark.parametrize(("text", "message"), [
    ("stages: [", "test lock is not valid YAML"),
    ("schema: '2.0'\n", "test lock records no stages"),
    ("stages:\n  a:\n    outs:\n    - path: x\n      md5: abc\n      hash: md5-dos2unix\n",
     "x of stage a has no DVC 3"),
])
def test_parse_lock_names_what_is_wrong(text, message):
    with pytest.raises(ReproduceError, match=message):
        parse_lock(text, "test lock")


def test_stages_up_to_a_model_are_its_ancestors_each_after_its_inputs():
    stages = parse_lock(LOCK, "test lock")
    # prod2vec reads a file inside sequences' folder output; train_mf is no ancestor of gpt4rec.
    assert stages_up_to(stages, "train_gpt4rec") == ["generate", "sequences", "prod2vec", "train_gpt4rec"]
    assert stages_up_to(stages, "train_mf") == ["generate", "sequences", "train_mf"]


def test_params_conflicts_name_values_the_run_did_not_use():
    stages = list(parse_lock(LOCK, "test lock").values())
    used = {"data": {"seed": 42, "n_users": 9}, "mf": {"factors": 32}, "gpt4rec": {"dim": 32, "lr": 0.003}}
    assert params_conflicts(stages, used) == []
    used["gpt4rec"]["dim"] = 64
    assert params_conflicts(stages, used) == ["gpt4rec.dim (lock: 32, run: 64)"]


def test_folder_hash_is_dvcs(tmp_path):
    """The value DVC 3.67 wrote to dvc.lock for a folder holding a.txt 'hello' and b.txt 'world'."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("hello\n")
    (tmp_path / "d" / "b.txt").write_text("world\n")
    assert entries_md5(dir_entries(tmp_path / "d")) == "ecf8f6613d6b2a92c412c00f6a32657c.dir"


def _cache_listing(cache: Path, entries: list[dict[str, str]]) -> str:
    """Store a folder listing as DVC's cache does; returns its hash."""
    md5 = entries_md5(entries)
    stored = cache / "files" / "md5" / md5[:2] / md5[2:]
    stored.parent.mkdir(parents=True)
    stored.write_bytes(json.dumps(entries, sort_keys=True).encode())
    return md5


def test_check_out_names_the_altered_file_and_both_hashes(tmp_path):
    out = tmp_path / "ws" / "data" / "raw"
    out.mkdir(parents=True)
    (out / "events.parquet").write_bytes(b"events")
    (out / "items.parquet").write_bytes(b"items")
    recorded = _cache_listing(tmp_path / "cache", dir_entries(out))
    assert check_out(tmp_path / "ws", tmp_path / "cache", "generate", "data/raw", recorded, "data").match
    (out / "events.parquet").write_bytes(b"tampered")
    check = check_out(tmp_path / "ws", tmp_path / "cache", "generate", "data/raw", recorded, "data")
    events, tampered = hashlib.md5(b"events").hexdigest(), hashlib.md5(b"tampered").hexdigest()
    assert not check.match and check.files == [FileDiff("data/raw/events.parquet", events, tampered)]
    (out / "events.parquet").unlink()
    assert check_out(tmp_path / "ws", tmp_path / "cache", "generate", "data/raw", recorded, "data").files == [
        FileDiff("data/raw/events.parquet", events, "")]


def test_check_out_reports_an_altered_folder_listing(tmp_path):
    out = tmp_path / "ws" / "data" / "raw"
    out.mkdir(parents=True)
    (out / "events.parquet").write_bytes(b"events")
    recorded = _cache_listing(tmp_path / "cache", dir_entries(out))
    listing = tmp_path / "cache" / "files" / "md5" / recorded[:2] / recorded[2:]
    listing.write_text("[]")
    (out / "events.parquet").write_bytes(b"other")
    (check_diff,) = check_out(tmp_path / "ws", tmp_path / "cache", "generate", "data/raw", recorded, "data").files
    assert check_diff.path.startswith("data/raw (folder listing") and check_diff.recorded == recorded[:-4]
    assert check_diff.found == hashlib.md5(b"[]").hexdigest()


def test_file_diffs_list_changed_missing_and_extra_files():
    recorded = [{"md5": "a", "relpath": "x"}, {"md5": "b", "relpath": "y"}]
    found = [{"md5": "a", "relpath": "x"}, {"md5": "c", "relpath": "z"}]
    assert file_diffs("out", recorded, found) == [FileDiff("out/y", "b", ""), FileDiff("out/z", "", "c")]


def test_metrics_within_tolerance_and_integers_exact():
    recorded = {"best_valid_ndcg_at_10": 0.2193, "valid_hr_at_10": 0.398, "loss": 4.46, "best_epoch": 3,
                "hr_at_10": 0.5, "train_seconds": 7.4}
    reproduced = {"best_valid_ndcg_at_10": 0.2193 + 5e-7, "valid_hr_at_10": 0.3981, "loss": 4.46,
                  "best_epoch": 3.0}
    checks = {m.name: m for m in compare_metrics(recorded, reproduced, 1e-6)}
    assert set(checks) == {"best_valid_ndcg_at_10", "valid_hr_at_10", "loss", "best_epoch"}  # test/timing: not
    assert checks["best_valid_ndcg_at_10"].ok and checks["loss"].ok and checks["best_epoch"].ok
    assert not checks["valid_hr_at_10"].ok and checks["best_epoch"].tolerance == 0.0
    assert not compare_metrics({"valid_mrr": 0.1}, {}, 1e-6)[0].ok  # not logged by the re-run


def test_report_passes_only_when_every_required_check_does(tmp_path):
    report = Report("gpt4rec", "3", "champion", "run", "abc", "local (/r)", "/ws", 1e-6, ["train_gpt4rec"],
                    rerun={"train_gpt4rec": 1.0})
    report.outputs = [OutCheck("prod2vec", "artifacts/embeddings/prod2vec", "artifact", "a.dir", "b.dir",
                               [FileDiff("artifacts/embeddings/prod2vec/meta.json", "x", "y")], required=False)]
    report.metrics = [MetricCheck("best_valid_ndcg_at_10", 0.2, 0.2, 1e-6)]
    assert report.passed and "differs (not required): meta.json" in report.table()
    report.outputs.append(OutCheck("sequences", "data/features", "data", "c.dir", "d.dir",
                                   [FileDiff("data/features/items.parquet", "e", "f")]))
    assert report.failures == ["reproduced data/features/items.parquet: recorded md5 e, reproduced md5 f"]
    saved = json.loads(report.save(tmp_path / "r.json").read_text())
    assert saved["passed"] is False and saved["outputs"][1]["match"] is False
    assert report.path == str(tmp_path / "r.json")


@pytest.mark.parametrize(("text", "version", "expected"), [
    ("gpt4rec@champion", None, ("gpt4rec", "champion")),
    ("gpt4rec/3", None, ("gpt4rec", "3")),
    ("gpt4rec", "3", ("gpt4rec", "3")),
])
def test_parse_target(text, version, expected):
    assert parse_target(text, version) == expected


@pytest.mark.parametrize(("text", "version", "message"), [
    ("gpt4rec", None, "say which version"),
    ("gpt4rec@", None, "say which version"),
    ("gpt4rec@champion", "3", "already names a version"),
])
def test_parse_target_refuses_unclear_input(text, version, message):
    with pytest.raises(ReproduceError, match=message):
        parse_target(text, version)


def test_cli_without_a_store_is_one_line_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RXREC_WORKDIR", str(tmp_path))
    monkeypatch.delenv("RXREC_MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["reproduce", "gpt4rec@champion"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [(
        f"error: no MLflow store at {tmp_path / 'var' / 'mlflow.db'}: nothing is registered there (set "
        "RXREC_MLFLOW_TRACKING_URI or mlflow.tracking_uri to the registry's store)")]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the demo's champion, end to end

# The tiny world (tests/conftest.py) with the other families kept short; no Triton for the gate.
DEMO = [*TINY, "meta_prod2vec.epochs=1", "ncf.epochs=1", "gru4rec.epochs=1", "bert4rec.epochs=1",
        "gate.latency_budget_ms=0"]
CODE = ("pipelines", "benchmarks")


def demo_env(project: Path) -> dict[str, str]:
    """What `make demo` gives the stages, pointed at the scratch project (its code, params, state)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RXREC_DVC", "MLFLOW_", "AIRFLOW_CTX"))}
    env.update(RXREC_WORKDIR=str(project), RXREC_PARAMS=str(project / "params.yaml"),
               RXREC_TRITON_REPO=str(project / "triton_repo"), PYTHONPATH=str(project),
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("RXREC_MLFLOW_TRACKING_URI", None)
    return env


def build_demo_project(project: Path) -> None:
    """A git repository with a commit of this project's code on the tiny world, `dvc repro register` run and
    pushed to its local remote (var/dvc-remote), as `make demo` then `rxrec data push --remote local`."""
    project.mkdir(parents=True)
    subprocess.run([*GIT, "init", "-q"], cwd=project, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=project, check=True)
    for name in CODE:
        shutil.copytree(PROJECT_ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config"):
        shutil.copy(PROJECT_ROOT / name, project / name)
    apply_overrides(project / "params.yaml", DEMO)
    (project / ".gitignore").write_text("/data/\n/artifacts/\n/reports/\n/var/\n/triton_repo/\n")
    subprocess.run([*GIT, "add", "-A"], cwd=project, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "demo"], cwd=project, check=True)
    env = demo_env(project)
    for args in (["repro", "register"], ["push"]):
        done = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("reproduce") / "project"
    build_demo_project(project)
    return project


def _reproduce(project: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    for key in ("RXREC_WORKDIR", "RXREC_PARAMS", "RXREC_TRITON_REPO"):
        monkeypatch.setenv(key, demo_env(project)[key])
    monkeypatch.delenv("RXREC_MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["reproduce", *args, "--project", str(project)])
    return result.exit_code, result.output


def _git(project: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=project, capture_output=True, text=True, check=True).stdout


def _registry(project: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'var' / 'mlflow.db'}", registry_uri=f"sqlite:///{project / 'var' / 'mlflow.db'}")
    model = client.get_registered_model("gpt4rec")
    return [sorted(model.aliases.items()), sorted(model.tags.items()),
            sorted((v.version, v.current_stage, sorted(v.tags.items())) for v in client.search_model_versions())]


def _state(project: Path) -> list:
    """What a refused reproduce must leave as it was: worktrees, refs, the state folder, the registry."""
    git = [_git(project, *args) for args in (["worktree", "list", "--porcelain"], ["for-each-ref"],
                                              ["status", "--porcelain"])]
    files = sorted(str(p.relative_to(project)) for p in (project / "var").rglob("*")
                   if "mlartifacts" not in p.parts and p.name != "mlflow.db")
    return [git, files, _registry(project)]


def _lock_out(project: Path, out: str) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return next(o["md5"] for s in lock.values() for o in s.get("outs", []) if o["path"] == out)


def _remote_object(project: Path, md5: str) -> Path:
    return project / "var" / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_demo_champion_reproduces_and_a_tampered_object_does_not(demo, monkeypatch):
    monkeypatch.delenv("RXREC_DVC_REMOTE", raising=False)
    code, output = _reproduce(demo, monkeypatch, "gpt4rec@champion")
    assert code == 0, output
    report = json.loads((demo / "var" / "reproduce" / "gpt4rec-v1.json").read_text())
    assert report["passed"] and report["git_commit"] == _git(demo, "rev-parse", "HEAD").strip()
    assert report["stages"] == ["generate", "validate", "sequences", "prod2vec", "train_gpt4rec"]
    assert list(report["rerun"]) == ["validate", "sequences", "prod2vec", "train_gpt4rec"]  # data/raw: restored
    data = {o["path"]: o for o in report["outputs"] if o["kind"] == "data"}
    assert set(data) == {"data/validated", "data/features"} and all(o["match"] for o in data.values())
    assert data["data/features"]["found"] == _lock_out(demo, "data/features")
    assert {r["path"] for r in report["restored"]} >= {"data/raw", "data/validated", "artifacts/models/gpt4rec"}
    metrics = {m["name"]: m for m in report["metrics"]}
    assert {"best_valid_ndcg_at_10", "best_valid_hr_at_10", "best_epoch"} <= set(metrics)
    assert all(m["ok"] for m in metrics.values()) and "gpt4rec v1: REPRODUCED" in output
    assert not (demo / "var" / "reproduce" / "gpt4rec-v1").exists()  # workspace removed
    assert len(_git(demo, "worktree", "list").splitlines()) == 1  # the checkout's own only

    # One object of the remote altered: the file is named with both hashes, nothing is re-run on it.
    listing = json.loads(_remote_object(demo, _lock_out(demo, "data/raw")).read_text())
    events = next(e for e in listing if e["relpath"] == "events.parquet")
    target = _remote_object(demo, events["md5"])
    original = target.read_bytes()
    target.chmod(0o644)
    target.write_bytes(original[:-8] + b"tampered")
    try:
        code, output = _reproduce(demo, monkeypatch, "gpt4rec", "--version", "1")
    finally:
        target.write_bytes(original)
    assert code == 1, output
    tampered = hashlib.md5(original[:-8] + b"tampered").hexdigest()
    assert (f"restored data/raw/events.parquet: recorded md5 {events['md5']}, restored md5 {tampered}"
            in " ".join(output.split()))
    report = json.loads((demo / "var" / "reproduce" / "gpt4rec-v1.json").read_text())
    assert not report["passed"] and report["rerun"] == {} and report["outputs"] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_bad_input_is_one_line_and_changes_nothing(demo, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("RXREC_DVC_REMOTE", raising=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{demo / 'var' / 'mlflow.db'}", registry_uri=f"sqlite:///{demo / 'var' / 'mlflow.db'}")
    bare_run = client.create_run(client.get_experiment_by_name("rxrec").experiment_id, run_name="no lineage")
    bare = client.create_model_version("gpt4rec", "file:///nowhere", run_id=bare_run.info.run_id)
    client.set_registered_model_alias("gpt4rec", "nolock", bare.version)

    def refused(*args: str, expect: str) -> None:
        """Exit 2 with one error line (after progress lines, if it got that far), and nothing changed."""
        before = _state(demo)
        code, output = _reproduce(demo, monkeypatch, *args)
        errors = [line for line in output.strip().splitlines() if not line.startswith("▶ ")]
        assert code == 2 and len(errors) == 1 and errors[0].startswith("error: ") and expect in errors[0], output
        assert _state(demo) == before

    refused("gpt4rec@nosuch", expect="registered model 'gpt4rec' in sqlite:")
    refused("gpt4rec", "--version", "99", expect="has no version 99")
    refused("nosuchmodel@champion", expect="there is no registered model 'nosuchmodel' in sqlite:")
    refused("gpt4rec@nolock", expect=f"gpt4rec v{bare.version} (MLflow run {bare_run.info.run_id}")
    monkeypatch.setenv("RXREC_DVC_REMOTE", "s3")  # the S3 remote of .dvc/config, its endpoint refusing
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{_free_port()}")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    refused("gpt4rec@champion", expect="DVC remote 's3' (s3://rxrec-dvc/dvcstore) could not give the run's data")
    monkeypatch.delenv("RXREC_DVC_REMOTE")
    remote = demo / "var" / "dvc-remote"
    remote.rename(remote.with_name("moved-remote"))
    try:
        refused("gpt4rec@champion", expect=f"DVC remote 'local' at {remote} does not exist")
    finally:
        remote.with_name("moved-remote").rename(remote)
