"""Registry, promotion gate, rollback and lineage on a real MLflow store and a real Triton server.

Two real GPT4Rec models of the tiny world: `strong` (the shared trained work dir) and `weak` (dim 8,
one epoch, no Prod2Vec init). Each test gets its own SQLite store, so the order of
registration decides who is champion.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.serve.triton_server import default_venv, find_free_port
from pipelines.stages import run_stage

WEAK = ["gpt4rec.epochs=1", "gpt4rec.dim=8", "gpt4rec.heads=1", "gpt4rec.init_from_prod2vec=false"]

pytestmark = pytest.mark.skipif(not (default_venv() / "bin" / "python").exists(),
                                reason="the gate measures latency through Triton: run infra/triton/setup.sh")


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
def store(tmp_path, tiny_overrides) -> dict:
    """A private MLflow store and Triton repository, and the overrides that point the stages at them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ports = [f"serve.{n}_port={find_free_port()}" for n in ("http", "grpc", "metrics")]
    base = tiny_overrides + [f"mlflow.tracking_uri={uri}", *ports]
    return {"uri": uri, "strong": base, "weak": base + WEAK, "repo": tmp_path / "triton_repo"}


@pytest.fixture(autouse=True)
def _triton_repo(store, monkeypatch):
    monkeypatch.setenv("RXREC_TRITON_REPO", str(store["repo"]))


def _register(models: dict[str, Path], store: dict, which: str) -> dict:
    return run_stage("register", store[which], workdir=models[which])


def _client(store: dict):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])


def _alias(store: dict, alias: str) -> int:
    return int(_client(store).get_model_version_by_alias("gpt4rec", alias).version)


def test_better_challenger_is_promoted_and_deployed(models, store):
    first = _register(models, store, "weak")
    assert first["promoted"] and first["version"] == "1" and "no champion yet" in first["reason"]
    assert run_stage("deploy", store["weak"], workdir=models["weak"])["model_version"] == "1"

    second = _register(models, store, "strong")
    gate = second["gate"]
    assert second["promoted"] and second["version"] == "2", second["reason"]
    assert gate["champion_version"] == "1" and gate["challenger_metrics"]["ndcg_at_10"] > gate["champion_metrics"][
        "ndcg_at_10"]
    assert {c["name"] for c in gate["checks"]} >= {"export parity", "serving latency", "ndcg_at_10",
                                                   "guard coverage_at_10"}
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
    assert parent.data.metrics["gate.champion.ndcg_at_10"] < parent.data.metrics["gate.challenger.ndcg_at_10"]


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
    assert json.loads(gate_file.read_text())["champion_metrics"]["ndcg_at_10"] > 0


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


def test_rerun_on_the_same_data_version_is_a_registry_noop(models, store):
    first = _register(models, store, "strong")
    client = _client(store)
    runs_before = len(client.search_runs([first["experiment_id"]]))
    again = _register(models, store, "strong")
    assert again["reused"] and again["version"] == first["version"] == "1" and again["reason"].startswith("no-op")
    assert len(client.search_model_versions("name='gpt4rec'")) == 1
    assert len(client.search_runs([first["experiment_id"]])) == runs_before
    assert _alias(store, "champion") == 1


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
