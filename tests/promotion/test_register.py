"""The register stage: its steps on a local registry, then the whole stage with real models and Triton.

The step tests use a SQLite store in tmp_path and no model. The stage tests use two real GPT4Rec
models of the tiny world: `strong` (the shared trained work dir) and `weak` (dim 8, one epoch, no
Prod2Vec init). Each stage test gets its own SQLite store, so the order of registration decides who
is champion.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.core.config import Paths, load_settings
from pipelines.promotion.gate import GateReport
from pipelines.promotion.register import (
    RegistryResult,
    Scores,
    already_gated,
    decide_and_apply,
    fingerprint,
    log_lineage,
    model_params,
    record_decision,
)
from pipelines.serve.triton_server import default_venv, find_free_port
from pipelines.stages import run_stage
from pipelines.track.service import CHAMPION, GATE_TAG, MlflowService

WEAK = ["gpt4rec.epochs=1", "gpt4rec.dim=8", "gpt4rec.heads=1", "gpt4rec.init_from_prod2vec=false"]

needs_triton = pytest.mark.skipif(not (default_venv() / "bin" / "python").exists(),
                                  reason="the gate measures latency through Triton: run infra/triton/setup.sh")

CHALLENGER = {"ndcg_at_10": 0.3, "coverage_at_10": 0.5}
LATENCY = {"p50_ms": 1.0, "p95_ms": 2.0, "max_ms": 3.0, "requests": 40.0}


# --------------------------------------------------------------------------- the steps, on a local registry


def _model(registry: MlflowService, request: pytest.FixtureRequest, versions: int,
           tags: dict[str, str] | None = None) -> str:
    """A registered model named after the test, with `versions` versions."""
    name = request.node.name
    registry.client.create_registered_model(name)
    for _ in range(versions):
        registry.client.create_model_version(name, source="file:///nowhere/model", tags=tags or {})
    return name


def test_fingerprint_covers_the_params_that_shape_the_model_only():
    base = load_settings().flat()
    fp = fingerprint("data-md5", model_params(base))
    for serving_only in ("serve.http_port", "gate.min_improvement", "mlflow.experiment", "service_retries.attempts"):
        changed = {**base, serving_only: "something else"}
        assert fingerprint("data-md5", model_params(changed)) == fp, serving_only
    assert fingerprint("data-md5", model_params({**base, "gpt4rec.dim": 8})) != fp
    assert fingerprint("other-data", model_params(base)) != fp


def test_a_gated_fingerprint_is_a_noop_and_an_ungated_one_is_finished(registry, request, tmp_path):
    paths = Paths(tmp_path)
    name = _model(registry, request, 1, {"fingerprint": "fp-1"})
    assert already_gated(registry, name, "fp-1", "data-md5", paths) is None  # killed before the gate decided
    assert not (paths.reports / "gate.json").exists()
    registry.tag_version(name, "1", GATE_TAG, "promoted: ...")
    registry.set_alias(name, CHAMPION, "1")
    result = already_gated(registry, name, "fp-1", "data-md5", paths)
    assert result is not None and result.reused and not result.promoted
    assert result.version == "1" and result.champion_version == "1" and result.tracking_uri == registry.tracking_uri
    assert result.reason == "no-op: this model (data data-md5, fingerprint fp-1) is already registered as v1; " \
                            "aliases unchanged"
    # gate.json is the stage's declared output: a no-op still writes it, quoting the earlier decision
    gate = json.loads((paths.reports / "gate.json").read_text())
    assert gate == result.gate and gate["challenger_version"] == "1" and not gate["applied"]
    assert gate["compared_on"] == "nothing new: v1 was gated before (promoted: ...)"
    assert already_gated(registry, name, "fp-2", "data-md5", paths) is None


def test_dry_run_decides_but_leaves_champion_where_it_is(registry, request):
    name = _model(registry, request, 2)
    registry.set_alias(name, CHAMPION, "1")
    champion = registry.get_version(name, "1")
    scores = Scores(CHALLENGER, champion, {"ndcg_at_10": 0.2, "coverage_at_10": 0.5}, "validation split",
                    resumed=False)
    settings = load_settings(overrides=["gate.promote=false"])
    report = decide_and_apply(registry, settings, name, "2", scores, parity_passed=True, latency=LATENCY)
    assert report.promote and not report.applied
    assert report.reason.startswith("dry run (gate.promote=false), would be promoted: challenger 0.3000 > ")
    assert str(registry.alias_version(name, CHAMPION).version) == "1"

    report = decide_and_apply(registry, load_settings(), name, "2", scores, parity_passed=True, latency=LATENCY)
    assert report.promote and report.applied and str(registry.alias_version(name, CHAMPION).version) == "2"


def test_a_resumed_reject_says_the_interrupted_promotion_stays(registry, request):
    name = _model(registry, request, 2)
    scores = Scores(CHALLENGER, registry.get_version(name, "1"), {"ndcg_at_10": 0.9}, "validation split",
                    resumed=True)
    report = decide_and_apply(registry, load_settings(), name, "2", scores, parity_passed=True, latency=LATENCY)
    assert not report.applied and report.champion_version == "1"
    assert report.reason.endswith("(note: an interrupted attempt had already made v2 champion; it stays)")


def test_the_decision_is_recorded_on_the_version_the_parent_run_and_gate_json(registry, request, tmp_path):
    name = _model(registry, request, 1)
    parent = registry.pipeline_run("", "retrain local", {})
    report = GateReport("1", None, True, True, "promoted: 0.3000, no champion yet", [], CHALLENGER, {},
                        "validation split", LATENCY)
    paths = Paths(tmp_path)
    record_decision(registry, name, parent, report, paths)
    assert json.loads((paths.reports / "gate.json").read_text()) == report.to_dict()
    assert registry.get_version(name, "1").tags[GATE_TAG] == report.reason
    run = registry.client.get_run(parent)
    assert run.data.tags["gate.decision"] == "promote" and run.data.tags["gate.champion_version"] == ""
    assert run.data.metrics["gate.valid.challenger.ndcg_at_10"] == 0.3 and run.data.metrics["gate.latency_p95_ms"] == 2.0
    assert run.data.tags["gate.decided_on"] == "validation"
    assert {a.path for a in registry.client.list_artifacts(parent)} == {"gate"}


def test_registry_json_is_the_stage_result(tmp_path):
    paths = Paths(tmp_path)
    result = RegistryResult("gpt4rec", "2", "run", "0", "sqlite:///x", promoted=True, reason="promoted",
                            champion_version="2", reused=False)
    published = result.publish(paths)
    assert published == json.loads((paths.reports / "registry.json").read_text())
    assert published["version"] == "2" and published["child_run_ids"] == {} and published["gate"] == {}


def test_the_version_run_carries_its_lock_params_and_commit_for_reproduce(registry, tmp_path):
    """lineage/ on the version's run: what `rxrec reproduce` rebuilds it from (overrides included)."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "code"], cwd=tmp_path, check=True)
    lock = "schema: '2.0'\nstages:\n  generate:\n    cmd: rxrec stage generate\n"
    (tmp_path / "dvc.lock").write_text(lock)
    run_id = registry.client.create_run(registry.experiment_id).info.run_id
    params = load_settings(overrides=["gpt4rec.epochs=2"]).flat()
    log_lineage(registry, run_id, Paths(tmp_path), params, "gpt4rec")
    assert {a.path for a in registry.client.list_artifacts(run_id, "lineage")} == {
        "lineage/dvc.lock", "lineage/params.yaml", "lineage/lineage.json"}
    folder = Path(registry.client.download_artifacts(run_id, "lineage", str(tmp_path / "downloaded")))
    assert (folder / "dvc.lock").read_text() == lock
    assert yaml.safe_load((folder / "params.yaml").read_text())["gpt4rec"]["epochs"] == 2
    facts = json.loads((folder / "lineage.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert facts["git_commit"] == head.stdout.strip() and facts["git_dirty"] is False
    assert facts["dvc_lock"] is True and facts["model_stage"] == "train_gpt4rec"


# --------------------------------------------------------------------------- the stage, with real models and Triton


@pytest.fixture(scope="module")
def models(trained_workdir, tmp_path_factory, tiny_overrides) -> dict[str, Path]:
    """Work dirs holding a strong and a weak trained model (evaluated and exported)."""
    root = tmp_path_factory.mktemp("gate_models")
    strong, weak = root / "strong", root / "weak"
    shutil.copytree(trained_workdir, strong)
    shutil.copytree(trained_workdir, weak)
    for stage in ("train_gpt4rec", "evaluate", "export_onnx"):
        run_stage(stage, tiny_overrides + WEAK, workdir=weak)
    return {"strong": strong, "weak": weak}


@pytest.fixture()
def store(tmp_path, tiny_overrides, monkeypatch) -> dict:
    """A private MLflow store and Triton repository, and the overrides that point the stages at them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ports = [f"serve.{n}_port={find_free_port()}" for n in ("http", "grpc", "metrics")]
    base = tiny_overrides + [f"mlflow.tracking_uri={uri}", *ports]
    monkeypatch.setenv("RXREC_TRITON_REPO", str(tmp_path / "triton_repo"))
    # The gate's latency check starts a Triton per registration: it runs where it is asserted ("timed", in
    # test_better_challenger_is_promoted_and_deployed); the other stage tests decide on the metrics alone.
    untimed = base + ["gate.latency_budget_ms=0"]
    return {"uri": uri, "timed": base, "strong": untimed, "weak": untimed + WEAK, "repo": tmp_path / "triton_repo"}


def _register(models: dict[str, Path], store: dict, which: str) -> dict:
    return run_stage("register", store[which], workdir=models[which])


def _client(store: dict):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])


def _alias(store: dict, alias: str) -> int:
    return int(_client(store).get_model_version_by_alias("gpt4rec", alias).version)


@needs_triton
@pytest.mark.slow  # the whole register -> gate -> deploy path into a real Triton
def test_better_challenger_is_promoted_and_deployed(models, store):
    first = _register(models, store, "weak")
    assert first["promoted"] and first["version"] == "1" and "no champion yet" in first["reason"]
    assert run_stage("deploy", store["weak"], workdir=models["weak"])["model_version"] == "1"

    second = run_stage("register", store["timed"], workdir=models["strong"])
    gate = second["gate"]
    assert second["promoted"] and second["version"] == "2", second["reason"]
    assert gate["champion_version"] == "1" and gate["valid_challenger"]["ndcg_at_10"] > gate["valid_champion"][
        "ndcg_at_10"]
    assert gate["test_challenger"]["ndcg_at_10"] > 0 and gate["test_champion"]["ndcg_at_10"] > 0  # reported after
    assert {c["name"] for c in gate["checks"]} >= {"export parity", "serving latency", "ndcg_at_10",
                                                   "guard coverage_at_10", "training"}
    training = next(c for c in gate["checks"] if c["name"] == "training")  # read from the model's train.json
    assert training["passed"] and training["detail"].startswith(("trained every epoch", "stopped early", "cut by"))
    assert gate["latency"]["p95_ms"] > 0
    assert _alias(store, "champion") == 2
    deployed = run_stage("deploy", store["strong"], workdir=models["strong"])
    assert deployed["new"] and deployed["model_version"] == "2" and deployed["triton_version"] == 2
    lineage = json.loads((Path(deployed["version_path"]) / "lineage.json").read_text())["metadata"]
    assert lineage["model_version"] == "2" and lineage["data_content_md5"]
    served = run_stage("serve_check", store["strong"], workdir=models["strong"])
    assert served["registry_version"] == "2" and served["matches_onnx_runtime"]
    # The decision with both models' metrics is on the pipeline's parent run in MLflow.
    parent = _client(store).get_run(second["parent_run_id"])
    assert parent.data.tags["gate.decision"] == "promote"
    assert parent.data.metrics["gate.valid.champion.ndcg_at_10"] < parent.data.metrics[
        "gate.valid.challenger.ndcg_at_10"]
    assert parent.data.metrics["report.test.challenger.ndcg_at_10"] == gate["test_challenger"]["ndcg_at_10"]


@needs_triton
def test_worse_challenger_is_rejected_with_reason_and_champion_untouched(models, store):
    assert _register(models, store, "strong")["promoted"]
    result = _register(models, store, "weak")
    assert result["version"] == "2" and not result["promoted"]
    assert result["reason"].startswith("rejected (champion v1 kept): ndcg_at_10: challenger")
    client = _client(store)
    assert _alias(store, "champion") == 1 and _alias(store, "challenger") == 2
    assert client.get_model_version("gpt4rec", "2").tags["gate_decision"] == result["reason"]
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags["gate.decision"] == "reject" and parent.data.tags["gate.reason"] == result["reason"]
    gate_file = models["weak"] / "reports" / "pipeline" / "gate.json"
    assert json.loads(gate_file.read_text())["valid_champion"]["ndcg_at_10"] > 0


@needs_triton
def test_parent_run_has_comparable_child_runs_per_family(models, store):
    result = _register(models, store, "strong")
    client = _client(store)
    children = client.search_runs([result["experiment_id"]],
                                  f"tags.`mlflow.parentRunId` = '{result['parent_run_id']}'")
    families = {r.data.tags["model_family"]: r for r in children}
    assert set(families) == set(result["child_run_ids"]) >= {"gpt4rec", "popularity"}
    names = {frozenset(k for k in r.data.metrics) for r in families.values()}
    assert len(names) == 1 and {"hr_at_10", "ndcg_at_10", "mrr", "coverage_at_10"} <= next(iter(names))
    assert {a.path for a in client.list_artifacts(result["parent_run_id"])} >= {"plots", "gate", "reports"}


@needs_triton
def test_rerun_on_the_same_data_version_is_a_registry_noop(models, store):
    first = _register(models, store, "strong")
    client = _client(store)
    runs_before = len(client.search_runs([first["experiment_id"]]))
    again = _register(models, store, "strong")
    assert again["reused"] and again["version"] == first["version"] == "1" and again["reason"].startswith("no-op")
    gate_file = models["strong"] / "reports" / "pipeline" / "gate.json"
    assert json.loads(gate_file.read_text())["reason"] == again["reason"]  # dvc repro needs the declared output
    assert len(client.search_model_versions("name='gpt4rec'")) == 1
    assert len(client.search_runs([first["experiment_id"]])) == runs_before
    assert _alias(store, "champion") == 1


@needs_triton
def test_rollback_moves_champion_back_and_redeploys(models, store, monkeypatch):
    from pipelines.cli import app

    _register(models, store, "weak")
    _register(models, store, "strong")
    run_stage("deploy", store["strong"], workdir=models["strong"])
    monkeypatch.setenv("RXREC_WORKDIR", str(models["strong"]))
    args = [a for o in store["strong"] for a in ("--set", o)]
    out = CliRunner().invoke(app, ["promote", "--rollback", *args])
    assert out.exit_code == 0, out.output
    assert "v2 → v1" in out.output
    assert _alias(store, "champion") == 1
    deploy = json.loads((models["strong"] / "reports" / "pipeline" / "deploy.json").read_text())
    assert deploy["new"] and deploy["model_version"] == "1" and deploy["triton_version"] == 2  # newest folder
    # Nothing earlier to go back to: a clear error, champion unchanged.
    out = CliRunner().invoke(app, ["promote", "--rollback", "--no-deploy", *args])
    assert out.exit_code == 1 and "first champion" in out.output
    assert _alias(store, "champion") == 1

    out = CliRunner().invoke(app, ["lineage", "gpt4rec@champion", "--json", *args])
    assert out.exit_code == 0, out.output
    chain = json.loads(out.output)
    assert chain["version"] == "1" and chain["parent_run_id"] and chain["data_content_md5"]
    assert chain["git_commit"] and chain["dataset"] == "synthetic" and chain["triton_versions"]
