"""Training stages tracked live: each family's child run under the pipeline run's parent, curves per epoch."""

from __future__ import annotations

import json

import pytest

from pipelines.core.config import Paths
from pipelines.stages import run_stage
from pipelines.track.live import STAGE_KIND_TAG
from pipelines.track.service import PARENT_TAG, RUN_KEY_TAG

GRU = ["gru4rec.dim=16", "gru4rec.max_len=10", "gru4rec.epochs=3", "gru4rec.patience=5", "gru4rec.batch_size=64"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_overrides):
    root = tmp_path_factory.mktemp("train_tracking")
    summaries = {name: run_stage(name, [*tiny_overrides, *GRU], workdir=root)
                 for name in ("generate", "validate", "sequences", "prod2vec", "train_gru4rec", "train_popularity")}
    return Paths(root), summaries


def _client(paths: Paths):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{paths.var / 'mlflow.db'}", registry_uri=f"sqlite:///{paths.var / 'mlflow.db'}")


def test_a_neural_family_logs_one_validation_point_per_epoch_while_it_trains(trained):
    paths, summaries = trained
    client, summary = _client(paths), summaries["train_gru4rec"]
    run = client.get_run(summary["mlflow_run_id"])
    history = client.get_metric_history(run.info.run_id, "valid_ndcg_at_10")
    epochs = json.loads((paths.models / "gru4rec" / "train.json").read_text())["history"]
    assert [point.step for point in history] == [row["epoch"] for row in epochs] == [1, 2, 3]
    assert [point.value for point in history] == pytest.approx([row["valid_ndcg_at_10"] for row in epochs])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3
    assert {"train_seconds", "best_epoch", "best_valid_ndcg_at_10"} <= set(run.data.metrics)
    best = epochs[int(run.data.metrics["best_epoch"]) - 1]
    assert run.data.metrics["best_valid_ndcg_at_10"] == pytest.approx(best["valid_ndcg_at_10"])
    assert run.data.params["gru4rec.epochs"] == "3" and run.data.tags[STAGE_KIND_TAG] == "model"
    assert run.info.status == "FINISHED"
    assert any(a.path == "plots/training.png" for a in client.list_artifacts(run.info.run_id, "plots"))
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "synthetic" and len(dataset_input.dataset.digest) == 32


def test_every_training_stage_of_one_invocation_is_a_child_of_one_parent(trained):
    paths, summaries = trained
    client = _client(paths)
    gru, popularity, prod2vec = (client.get_run(summaries[name]["mlflow_run_id"])
                                 for name in ("train_gru4rec", "train_popularity", "prod2vec"))
    parent_id = gru.data.tags["mlflow.parentRunId"]
    assert popularity.data.tags["mlflow.parentRunId"] == parent_id == prod2vec.data.tags["mlflow.parentRunId"]
    # An embedding method is named by `method`, not `model_family` (which register's runs are keyed on).
    assert prod2vec.data.tags["method"] == "prod2vec" and "model_family" not in prod2vec.data.tags
    parent = client.get_run(parent_id)
    assert parent.data.tags[PARENT_TAG] == "true" and parent.data.tags[RUN_KEY_TAG]
    # A family without epochs is scored once on the validation split: the same metric names.
    assert [p.step for p in client.get_metric_history(popularity.info.run_id, "valid_ndcg_at_10")] == [0]


def test_a_retried_training_stage_logs_into_the_same_child_run(trained, tiny_overrides):
    paths, summaries = trained
    again = run_stage("train_popularity", [*tiny_overrides, *GRU], workdir=paths.root)
    assert again["mlflow_run_id"] == summaries["train_popularity"]["mlflow_run_id"]


def test_the_pipeline_refuses_a_refit_its_gate_could_not_judge(trained):
    paths, _ = trained
    with pytest.raises(ValueError, match=r"gru4rec.refit=true trains the model on the validation targets"):
        run_stage("train_gru4rec", ["gru4rec.refit=true"], workdir=paths.root)
