"""MlflowService on a local SQLite store in tmp_path (no server): runs, versions, lineage, and its retry policy."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from pipelines.core.config import Paths, load_settings
from pipelines.core.retry import RetryPolicy, ServiceUnavailable
from pipelines.serve.triton_server import find_free_port
from pipelines.track.live import DatasetRef
from pipelines.track.service import CHAMPION, PARENT_TAG, RUN_KEY_TAG, MlflowService

NO_WAIT = RetryPolicy(attempts=3, backoff_s=0.0, max_backoff_s=0.0, timeout_s=2.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow_store")


@pytest.fixture()
def service(store, request) -> MlflowService:
    """One experiment per test in a store shared by the module (a fresh SQLite store costs seconds)."""
    return MlflowService(f"sqlite:///{store / 'mlflow.db'}", request.node.name, store / "mlartifacts", NO_WAIT)


def _tiny_onnx(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _contract_onnx(path: Path) -> Path:
    """The served contract's shape: input_ids int64 (batch, length) -> item_ids int64, scores float32."""
    dims = ["batch", "length"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["item_ids"]),
         helper.make_node("Cast", ["input_ids"], ["scores"], to=TensorProto.FLOAT)], "contract",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims)],
        [helper.make_tensor_value_info("item_ids", TensorProto.INT64, dims),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_from_settings_takes_store_experiment_and_retry_policy_from_params(tmp_path):
    settings = load_settings(overrides=["service_retries.attempts=7", "service_retries.backoff_s=0.5",
                                        "mlflow.tracking_uri=sqlite:///" + str(tmp_path / "db" / "mlflow.db")])
    paths = Paths(tmp_path)
    service = MlflowService.from_settings(settings, paths)
    assert service.tracking_uri == paths.tracking_uri(settings) and service.experiment == settings.mlflow.experiment
    assert service.retry == RetryPolicy.from_settings(settings.service_retries) and service.retry.attempts == 7
    assert service.artifact_root == paths.mlflow_artifacts
    assert (tmp_path / "db").is_dir()  # SQLite needs the folder of its file
    assert MlflowService.from_settings(settings, paths, experiment="other").experiment == "other"


def test_experiment_is_created_once_with_the_local_artifact_root(service, store):
    experiment_id = service.experiment_id
    again = MlflowService(service.tracking_uri, service.experiment, None, NO_WAIT)
    assert again.experiment_id == experiment_id
    location = service.client.get_experiment(experiment_id).artifact_location
    assert location == (store / "mlartifacts").resolve().as_uri()


def test_parent_and_child_runs_are_found_again_for_a_retried_task(service):
    tags = {"git_commit": "abc", "airflow_dag_run_id": "dag-run-1"}  # the lineage tags carry the dag run id
    parent = service.pipeline_run("dag-run-1", "retrain dag-run-1", tags)
    assert service.pipeline_run("dag-run-1", "retrain again", tags) == parent
    assert service.pipeline_run("dag-run-2", "retrain dag-run-2", {"airflow_dag_run_id": "dag-run-2"}) != parent
    assert service.client.get_run(parent).data.tags[PARENT_TAG] == "true"
    child = service.child_run(parent, "gpt4rec", {"git_commit": "abc"})
    assert service.child_run(parent, "gpt4rec", {}) == child != service.child_run(parent, "popularity", {})
    service.log_values(child, params={"gpt4rec.dim": 32}, metrics={"ndcg_at_10": 0.25}, tags={"note": "x"})
    service.log_values(child, params={"gpt4rec.dim": 64}, metrics={"ndcg_at_10": 0.5})  # a param is logged once
    run = service.client.get_run(child)
    assert run.data.params == {"gpt4rec.dim": "32"} and run.data.tags["note"] == "x"
    assert service.run_metrics(child) == {"ndcg_at_10": 0.5}


def test_same_fingerprint_reuses_the_registered_version(service, tmp_path):
    name = f"model-{service.experiment}"
    run = service.pipeline_run("", "retrain local", {})
    model = _tiny_onnx(tmp_path / "model.onnx")
    version = service.log_onnx_model(run, model, name, {"fingerprint": "fp-1", "git_commit": "abc"})
    assert version == "1"
    assert service.log_onnx_model(run, model, name, {"fingerprint": "fp-1"}) == "1"
    assert len(service.client.search_model_versions(f"name='{name}'")) == 1
    found = service.find_version(name, "fp-1")
    assert found is not None and found.run_id == run and found.tags["git_commit"] == "abc"
    assert service.find_version(name, "fp-2") is None
    downloaded = service.download_model(f"models:/{name}/1", tmp_path / "download")
    assert downloaded.suffix == ".onnx" and onnx.load(str(downloaded)).graph.node[0].op_type == "Identity"


def test_lineage_follows_alias_or_version_to_runs_and_tags(service, tmp_path):
    name = f"model-{service.experiment}"
    parent = service.pipeline_run("dag-7", "retrain dag-7", {})
    child = service.child_run(parent, "gpt4rec", {})
    version = service.log_onnx_model(child, _tiny_onnx(tmp_path / "model.onnx"), name,
                                     {"fingerprint": "fp", "dataset": "synthetic", "airflow_dag_run_id": "dag-7"})
    assert service.alias_version(name, CHAMPION) is None
    service.set_alias(name, CHAMPION, version)
    chain = service.lineage(f"{name}@{CHAMPION}")
    assert chain == service.lineage(f"{name}/{version}")
    assert chain["mlflow_run_id"] == child and chain["parent_run_id"] == parent
    assert chain["aliases"] == [CHAMPION] and chain["dataset"] == "synthetic" and chain["airflow_dag_run_id"] == "dag-7"
    with pytest.raises(KeyError, match="has no alias 'challenger'"):
        service.lineage(f"{name}@challenger")
    with pytest.raises(ValueError, match="MODEL@ALIAS or MODEL/VERSION"):
        service.lineage(name)


def test_a_file_beside_the_registered_model_comes_back_and_a_missing_one_is_none(service, tmp_path):
    """What deploy reads for the champion's user vectors: a run holding a logged model named "model" (MLflow 3 reads
    the run path `model/` as that model's artifacts) and a file under its own path."""
    run = service.pipeline_run("", "retrain local", {})
    service.log_onnx_model(run, _tiny_onnx(tmp_path / "model.onnx"), f"model-{service.experiment}", {})
    stored = tmp_path / "users.npz"
    stored.write_bytes(b"vectors")
    service.log_artifacts(run, {"user_vectors": stored, "missing": tmp_path / "absent.npz"})
    got = service.download_run_file(run, "user_vectors/users.npz", tmp_path / "down")
    assert got is not None and got.read_bytes() == b"vectors"
    assert service.download_run_file(run, "user_vectors/other.npz", tmp_path / "down") is None
    assert service.download_run_file(run, "nothing/users.npz", tmp_path / "down") is None


def test_registry_tags_and_aliases(service):
    name = f"model-{service.experiment}"
    service.client.create_registered_model(name)
    assert service.alias_version("no-such-model", CHAMPION) is None
    assert service.model_tag(name, "champion_history") is None
    service.set_model_tag(name, "champion_history", "[]")
    assert service.model_tag(name, "champion_history") == "[]"


def test_every_call_retries_per_the_policy_then_names_the_server(monkeypatch):
    for variable in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(variable, raising=False)  # restored after the test: the service sets them
    url = f"http://127.0.0.1:{find_free_port()}"
    service = MlflowService(url, "rxrec", None, NO_WAIT)
    for call in (lambda: service.alias_version("gpt4rec", CHAMPION), lambda: service.experiment_id,
                 lambda: service.lineage("gpt4rec@champion")):
        with pytest.raises(ServiceUnavailable) as caught:
            call()
        assert caught.value.attempts == 3 and caught.value.url == url and len(caught.value.delays_s) == 2
        assert "mlflow/server.sh" in str(caught.value)


def test_a_request_that_is_wrong_is_not_retried(service):
    from mlflow.exceptions import MlflowException

    attempts: list[str] = []
    original = service.client.get_model_version

    def counted(*args, **kwargs):
        attempts.append("call")
        return original(*args, **kwargs)

    service.client.get_model_version = counted
    with pytest.raises(MlflowException):
        service.get_version("no-such-model", "1")
    assert attempts == ["call"]


def test_a_fluent_run_logs_into_the_services_store_and_experiment(service):
    import mlflow

    with service.start_run(run_name="prod2vec") as run:
        mlflow.log_metric("hr_at_10", 0.5)
    logged = service.client.get_run(run.info.run_id)
    assert logged.info.experiment_id == service.experiment_id and logged.info.run_name == "prod2vec"
    assert logged.data.metrics == {"hr_at_10": 0.5}


def test_stages_of_one_invocation_share_the_parent_found_by_the_run_key(service, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID", raising=False)
    monkeypatch.setenv("RXREC_RUN_ID", "repro-1")
    parent = service.pipeline_run("", "pipeline repro-1", {})  # the first training stage
    assert service.pipeline_run("", "retrain local", {"git_commit": "abc"}) == parent  # e.g. register, later
    assert service.client.get_run(parent).data.tags[RUN_KEY_TAG] == "repro-1"
    monkeypatch.setenv("RXREC_RUN_ID", "repro-2")
    assert service.pipeline_run("", "pipeline repro-2", {}) != parent


def test_two_tasks_creating_the_parent_at_once_agree_on_the_oldest(service, monkeypatch):
    first = service.client.create_run(service.experiment_id, run_name="racer",
                                      tags={PARENT_TAG: "true", RUN_KEY_TAG: "race"}).info.run_id
    original, calls = service._matching_runs, []

    def searched_before_the_other_task_created_its_run(filter_string: str):
        calls.append(filter_string)
        return [] if len(calls) == 1 else original(filter_string)

    monkeypatch.setattr(service, "_matching_runs", searched_before_the_other_task_created_its_run)
    assert service.pipeline_run("race", "pipeline race", {}) == first
    monkeypatch.undo()
    alive = service.client.search_runs([service.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = 'race'")
    assert [run.info.run_id for run in alive] == [first]  # the extra one was deleted


def test_a_training_run_gets_the_dataset_as_an_input(service):
    run = service.child_run(service.pipeline_run("dag-data", "p", {}), "gru4rec", {})
    source = "s3://rxrec-dvc/dvcstore/files/md5/01/23456789abcdef.dir"
    service.log_dataset(run, DatasetRef("synthetic", "0123456789abcdef0123456789abcdef", source))
    (dataset_input,) = service.client.get_run(run).inputs.dataset_inputs
    assert dataset_input.dataset.name == "synthetic"
    assert dataset_input.dataset.digest == "0123456789abcdef0123456789abcdef"
    assert source in dataset_input.dataset.source
    assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == "training"


def test_parallel_stages_logging_one_dataset_link_it_and_other_refusals_still_raise(service, monkeypatch):
    """The server looks the dataset up, then inserts it: a stage that inserts second is refused by the unique key
    (seen with the DAG's parallel training tasks). The row exists by then, so the same call links it."""
    from mlflow.exceptions import MlflowException

    ref = DatasetRef("synthetic", "00112233445566778899aabbccddeeff", "/tmp/data.dir")
    real, calls = service.client.log_inputs, []

    def lost_the_race_once(run_id, datasets):
        calls.append(run_id)
        if len(calls) == 1:
            real(service.child_run(service.pipeline_run("dag-race", "p", {}), "other", {}), datasets)  # the racer
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest", error_code="BAD_REQUEST")
        return real(run_id, datasets)

    monkeypatch.setattr(service.client, "log_inputs", lost_the_race_once)
    run = service.child_run(service.pipeline_run("dag-race", "p", {}), "gpt4rec", {})
    service.log_dataset(run, ref)
    assert len(calls) == 2
    assert [i.dataset.digest for i in service.client.get_run(run).inputs.dataset_inputs] == [ref.digest]

    def refused(run_id, datasets):
        raise MlflowException("Invalid dataset source", error_code="INVALID_PARAMETER_VALUE")

    monkeypatch.setattr(service.client, "log_inputs", refused)
    with pytest.raises(MlflowException, match="Invalid dataset source"):
        service.log_dataset(run, ref)


def test_the_logged_onnx_model_has_signature_example_linked_metrics_and_a_description(service, tmp_path):
    import mlflow

    name = f"model-{service.experiment}"
    run = service.child_run(service.pipeline_run("dag-model", "p", {}), "gpt4rec", {})
    service.log_values(run, metrics={"ndcg_at_10": 0.25})
    version = service.log_onnx_model(run, _contract_onnx(tmp_path / "model.onnx"), name, {"fingerprint": "fp"})
    info = mlflow.models.get_model_info(f"models:/{name}/{version}")
    assert [spec.name for spec in info.signature.inputs.inputs] == ["input_ids"]
    assert info.signature.inputs.inputs[0].shape == (-1, -1) and str(info.signature.inputs.inputs[0].type) == "int64"
    assert [spec.name for spec in info.signature.outputs.inputs] == ["item_ids", "scores"]
    assert info.saved_input_example_info is not None
    logged = mlflow.get_logged_model(info.model_id)
    assert {metric.key: metric.value for metric in logged.metrics}["ndcg_at_10"] == 0.25
    service.describe_version(name, version, "| check | passed |\n|---|---|\n| ndcg | yes |")
    assert service.get_version(name, version).description.startswith("| check | passed |")


def test_download_reads_the_services_registry_whatever_mlflow_was_pointed_at(service, tmp_path):
    """A stage process whose MLflow globals point elsewhere (another store) still downloads from the service's."""
    import mlflow

    name = f"model-{service.experiment}"
    run = service.pipeline_run("", "retrain local", {})
    service.log_onnx_model(run, _tiny_onnx(tmp_path / "model.onnx"), name, {"fingerprint": "fp-dl"})
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(elsewhere)
    mlflow.set_registry_uri(elsewhere)
    downloaded = service.download_model(f"models:/{name}/1", tmp_path / "download")
    assert onnx.load(str(downloaded)).graph.node[0].op_type == "Identity"


def test_an_experiment_created_by_a_parallel_stage_meanwhile_is_used(service, monkeypatch):
    """Two training stages start at once: the one that loses the create finds the other's experiment."""
    other = MlflowService(service.tracking_uri, service.experiment, service.artifact_root, NO_WAIT)
    created = other.experiment_id
    real = service.client.get_experiment_by_name
    lookups: list[str] = []

    def stale_first(name: str):  # the first lookup ran just before the other stage's create
        lookups.append(name)
        return None if len(lookups) == 1 else real(name)

    monkeypatch.setattr(service.client, "get_experiment_by_name", stale_first)
    assert service.experiment_id == created
    assert len(lookups) == 2
