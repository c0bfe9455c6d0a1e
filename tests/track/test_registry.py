"""Registry and gate on a real MLflow (SQLite store in a temp folder)."""

import json
import shutil

import pytest

from pipelines.config import Paths, load_settings
from pipelines.stages import register, run_stage


@pytest.fixture()
def registered(trained_workdir, tmp_path, tiny_overrides):
    """A private copy of the trained work dir with the model registered once."""
    root = tmp_path / "work"
    shutil.copytree(trained_workdir, root)
    run_stage("register", tiny_overrides, workdir=root)
    return root


def _client(root):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'var' / 'mlflow.db'}")


def test_first_model_becomes_champion_with_lineage(registered):
    result = json.loads((registered / "reports" / "pipeline" / "registry.json").read_text())
    assert result["promoted"] and result["champion_version"] == result["version"] == "1"
    client = _client(registered)
    version = client.get_model_version_by_alias("gpt4rec", "champion")
    assert str(version.version) == "1"
    for tag in ("git_commit", "data_content_md5", "fingerprint", "run_id", "dataset"):
        assert version.tags.get(tag), tag
    run = client.get_run(version.run_id)
    assert run.data.metrics["ndcg_at_10"] > 0 and "popularity.ndcg_at_10" in run.data.metrics
    assert run.data.params["gpt4rec.epochs"] == "3"
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"reports", "torch"} <= artifacts


def test_rerun_of_the_same_model_adds_no_version(registered, tiny_overrides):
    run_stage("register", tiny_overrides, workdir=registered)
    versions = _client(registered).search_model_versions("name='gpt4rec'")
    assert len(versions) == 1
    result = json.loads((registered / "reports" / "pipeline" / "registry.json").read_text())
    assert result["reused"] and result["version"] == "1"


def test_worse_challenger_is_rejected_and_champion_untouched(registered, tiny_overrides):
    metrics_file = registered / "reports" / "pipeline" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["models"]["gpt4rec"]["ndcg_at_10"] *= 0.5
    metrics_file.write_text(json.dumps(metrics))
    settings = load_settings(overrides=tiny_overrides + ["gpt4rec.lr=0.001"])  # another fingerprint
    result = register(settings, Paths(registered))
    assert result["version"] == "2" and not result["promoted"]
    assert "does not beat champion v1" in result["reason"]
    client = _client(registered)
    assert client.get_model_version_by_alias("gpt4rec", "champion").version == 1
    assert client.get_model_version_by_alias("gpt4rec", "challenger").version == 2
    assert "does not beat" in client.get_model_version("gpt4rec", "2").tags["gate_decision"]


def test_failed_parity_is_never_promoted(registered, tiny_overrides):
    parity_file = registered / "reports" / "pipeline" / "parity.json"
    parity = json.loads(parity_file.read_text())
    parity["passed"] = False
    parity_file.write_text(json.dumps(parity))
    metrics_file = registered / "reports" / "pipeline" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["models"]["gpt4rec"]["ndcg_at_10"] = 1.0  # even a perfect score
    metrics_file.write_text(json.dumps(metrics))
    result = register(load_settings(overrides=tiny_overrides + ["gpt4rec.lr=0.002"]), Paths(registered))
    assert not result["promoted"] and "parity" in result["reason"]
    assert _client(registered).get_model_version_by_alias("gpt4rec", "champion").version == 1
