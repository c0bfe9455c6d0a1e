"""MLflow tracking and the model registry: a parent run per pipeline run, a child run per model family.

Runs are laid out for the MLflow compare view: one parent run per DAG run (found again by its Airflow
dag run id, so a retried task does not open a second one) and one child run per model family with
the same metric names (hr_at_10, ndcg_at_10, mrr, coverage_at_10, train_seconds). The GPT4Rec child
run holds the ONNX model, registered as a new version with alias `challenger`; the gate
(pipelines.promotion.gate) decides whether `champion` moves to it. The registered model keeps the list
of past champions in a tag, which is what `rollback` walks back.

Re-registering the same model (same fingerprint: data content hash and the params that shape the
model) reuses the existing version and logs nothing, so a re-run on the same data version is a
no-op for the registry. A task killed after registering but before the gate decided leaves a
version without a `gate_decision` tag; the retry reuses that version and finishes the gate.

Every call to the tracking server goes through `_service`: transient failures (server down,
restarting, timing out) are retried with exponential backoff (params.yaml `service_retries`), then
fail with `ServiceUnavailable` naming the URL and what to do. MLflow's own HTTP retries are turned
off for a server URI so that this policy is the one in control of how long a task waits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipelines.core.files import write_json_atomic
from pipelines.core.retry import RetryPolicy, call_with_retry, is_transient

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"  # registered-model tag: JSON list of versions that were champion, oldest first
PRIMARY_METRIC = "ndcg_at_10"
# params.yaml sections that do not change the trained model: left out of the fingerprint.
NOT_MODEL_SECTIONS = ("serve", "mlflow", "gate", "validate", "service_retries")
PARENT_TAG = "rxrec.pipeline_run"
FAMILY_TAG = "model_family"
GATE_TAG = "gate_decision"  # model-version tag set when the gate has decided on that version

F = TypeVar("F", bound=Callable[..., Any])
_retry = {"policy": RetryPolicy()}
_inside = threading.local()
ADVICE = ("Start the MLflow server (mlflow/server.sh) or point mlflow.tracking_uri / RXREC_MLFLOW_TRACKING_URI at "
          "one that runs, then run the task again: the registry was not changed by the failed call, and a re-run "
          "reuses a version already registered for the same fingerprint.")


def _service(fn: F) -> F:
    """Run a registry call under the retry policy (nested calls are not retried twice)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(_inside, "active", False):
            return fn(*args, **kwargs)
        _inside.active = True
        try:
            import mlflow

            return call_with_retry(lambda: fn(*args, **kwargs), service="MLflow", url=mlflow.get_tracking_uri(),
                                   policy=_retry["policy"], advice=ADVICE, what=fn.__name__)
        finally:
            _inside.active = False

    return wrapper  # type: ignore[return-value]


@dataclass
class RegistryResult:
    """What the register stage did (reports/pipeline/registry.json, the Airflow XCom)."""

    model_name: str
    version: str
    run_id: str
    experiment_id: str
    tracking_uri: str
    promoted: bool
    reason: str
    champion_version: str
    reused: bool
    parent_run_id: str = ""
    child_run_ids: dict[str, str] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))


def configure(tracking_uri: str, experiment: str, artifact_root: Path | None,
              retry: RetryPolicy | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id.

    A local artifact folder is only used with a local store: a tracking server decides (and proxies)
    where artifacts go. `retry` is the policy of every later registry call (default: RetryPolicy()).
    """
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    policy = retry or RetryPolicy()
    _retry["policy"] = policy
    if tracking_uri.startswith(("http://", "https://")):
        # One HTTP attempt per call with a bounded wait: our policy does the retrying (MLflow's default of
        # 7 retries with backoff 2 would hold a task for minutes before anyone hears of it).
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(policy.timeout_s)))
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return _experiment_id(experiment, artifact_root, tracking_uri)


@_service
def _experiment_id(experiment: str, artifact_root: Path | None, tracking_uri: str) -> str:
    import mlflow

    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    local = artifact_root is not None and not tracking_uri.startswith(("http://", "https://"))
    return mlflow.create_experiment(experiment, artifact_location=artifact_root.resolve().as_uri() if local else None)


def fingerprint(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def model_params(flat: dict[str, Any]) -> str:
    """The params that shape the model, as canonical JSON (fingerprint input)."""
    return json.dumps({k: v for k, v in flat.items() if k.split(".", 1)[0] not in NOT_MODEL_SECTIONS},
                      sort_keys=True, default=str)


@_service
def find_version(model_name: str, fp: str):
    """The registered version carrying this fingerprint, if any."""
    from mlflow import MlflowClient

    for version in MlflowClient().search_model_versions(f"name='{model_name}'"):
        if version.tags.get("fingerprint") == fp:
            return version
    return None


@_service
def alias_version(model_name: str, alias: str):
    """The model version an alias points to, or None when the alias (or model) does not exist.

    A server that does not answer is an error, not "no champion": the gate must never decide as if
    there were none because the registry was unreachable.
    """
    from mlflow.exceptions import MlflowException

    from mlflow import MlflowClient

    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if is_transient(exc):
            raise
        return None


@_service
def run_metrics(run_id: str) -> dict[str, float]:
    from mlflow import MlflowClient

    return dict(MlflowClient().get_run(run_id).data.metrics)


@_service
def tag_version(model_name: str, version: str, key: str, value: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_model_version_tag(model_name, version, key, value)


@_service
def get_version(model_name: str, version: str):
    from mlflow import MlflowClient

    return MlflowClient().get_model_version(model_name, version)


@_service
def pipeline_run(experiment_id: str, dag_run_id: str, name: str, tags: dict[str, str]) -> str:
    """The parent run of this pipeline run: reused for the same Airflow dag run id, else created."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if dag_run_id:
        found = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = 'true' and "
                                   f"tags.airflow_dag_run_id = '{dag_run_id}'", max_results=1)
        if found:
            return found[0].info.run_id
    return client.create_run(experiment_id, run_name=name, tags={**tags, PARENT_TAG: "true"}).info.run_id


@_service
def child_run(experiment_id: str, parent_id: str, family: str, tags: dict[str, str]) -> str:
    """The child run of one model family under the parent (reused when a task is retried)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and "
                               f"tags.{FAMILY_TAG} = '{family}'", max_results=1)
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, run_name=family,
                             tags={**tags, "mlflow.parentRunId": parent_id, FAMILY_TAG: family}).info.run_id


@_service
def log_values(run_id: str, *, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
               tags: dict[str, str] | None = None) -> None:
    """Params, metrics and tags of one run in one batch call (params truncated to MLflow's limit)."""
    from mlflow.entities import Metric, Param, RunTag

    from mlflow import MlflowClient

    now = int(__import__("time").time() * 1000)
    client = MlflowClient()
    existing = client.get_run(run_id).data.params
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)[:500]) for k, v in (params or {}).items() if k not in existing],
        tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()],
    )


@_service
def history(model_name: str) -> list[str]:
    """Versions that were champion, oldest first (the registered model's tag)."""
    from mlflow import MlflowClient

    raw = MlflowClient().get_registered_model(model_name).tags.get(HISTORY_TAG)
    return [str(v) for v in json.loads(raw)] if raw else []


@_service
def promote(model_name: str, version: str) -> None:
    """Move `champion` to `version`, drop its `challenger` alias, remember it in the champion history."""
    from mlflow import MlflowClient

    client = MlflowClient()
    past = history(model_name)
    current = alias_version(model_name, CHAMPION)
    if current is not None and (not past or past[-1] != str(current.version)):
        past.append(str(current.version))
    client.set_registered_model_alias(model_name, CHAMPION, version)
    if not past or past[-1] != version:
        past.append(version)
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(past))
    challenger = alias_version(model_name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)


@_service
def mark_challenger(model_name: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(model_name, CHALLENGER, version)


class RollbackError(RuntimeError):
    """There is no earlier champion to go back to."""


@_service
def rollback(model_name: str) -> tuple[str, str]:
    """Move `champion` back to the previous champion; returns (from_version, to_version)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    current = alias_version(model_name, CHAMPION)
    if current is None:
        raise RollbackError(f"model {model_name!r} has no {CHAMPION!r} alias: nothing to roll back")
    past = history(model_name)
    if past and past[-1] == str(current.version):
        past.pop()
    if not past:
        raise RollbackError(f"model {model_name!r}: v{current.version} is the first champion, "
                            "there is no previous one to roll back to")
    target = past[-1]
    client.set_registered_model_alias(model_name, CHAMPION, target)
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(past))
    client.set_model_version_tag(model_name, str(current.version), "rolled_back",
                                 f"champion moved back to v{target}")
    return str(current.version), target


@_service
def log_onnx_model(run_id: str, onnx_path: Path, model_name: str, tags: dict[str, str]) -> str:
    """Log the ONNX file as the run's model and register it; returns the new version number.

    With a `fingerprint` tag, a version already carrying it is returned instead (a retried call, or a
    task killed after registering, never makes a second version of the same model).
    """
    import onnx

    import mlflow

    if tags.get("fingerprint"):
        existing = find_version(model_name, tags["fingerprint"])
        if existing is not None:
            return str(existing.version)

    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(onnx_model=onnx.load(str(onnx_path)), name="model",
                                     pip_requirements=["onnxruntime", "numpy"], save_as_external_data=False)
    version = mlflow.register_model(info.model_uri, model_name, tags={**tags, "run_id": run_id})
    return str(version.version)


@_service
def log_artifacts(run_id: str, artifacts: dict[str, Path]) -> None:
    """Files and folders into the run's artifact store, under the given artifact paths."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for artifact_path, local in artifacts.items():
        if local.is_dir():
            client.log_artifacts(run_id, str(local), artifact_path=artifact_path)
        elif local.exists():
            client.log_artifact(run_id, str(local), artifact_path=artifact_path)


@_service
def download_model(model_uri: str, dst: Path) -> Path:
    """Fetch a registered model's ONNX file (e.g. models:/gpt4rec@champion) to dst/model.onnx."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    found = sorted(local.rglob("*.onnx"))
    if not found:
        raise FileNotFoundError(f"no .onnx file in the artifacts of {model_uri}")
    return found[0]


@_service
def lineage(model_uri: str) -> dict[str, Any]:
    """The chain behind MODEL@ALIAS or MODEL/VERSION: version, MLflow runs, commit, data hash, dataset, DAG run."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if "@" in model_uri:
        name, alias = model_uri.split("@", 1)
        version = alias_version(name, alias)
        if version is None:
            raise KeyError(f"model {name!r} has no alias {alias!r}")
    elif "/" in model_uri:
        name, number = model_uri.split("/", 1)
        version = client.get_model_version(name, number)
    else:
        raise ValueError(f"{model_uri!r} must look like MODEL@ALIAS or MODEL/VERSION, e.g. gpt4rec@champion")
    run = client.get_run(version.run_id)
    parent_id = run.data.tags.get("mlflow.parentRunId", "")
    parent = client.get_run(parent_id) if parent_id else None
    aliases = list(getattr(version, "aliases", []) or [])
    return {
        "model": name, "version": str(version.version), "aliases": aliases,
        "mlflow_run_id": version.run_id, "mlflow_run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "parent_run_id": parent_id, "parent_run_name": parent.info.run_name if parent else "",
        "airflow_dag_run_id": version.tags.get("airflow_dag_run_id", ""),
        "git_commit": version.tags.get("git_commit", ""),
        "data_dvc_md5": version.tags.get("data_dvc_md5", ""),
        "data_content_md5": version.tags.get("data_content_md5", ""),
        "data_raw_dvc_md5": version.tags.get("data_raw_dvc_md5", ""),
        "dataset": version.tags.get("dataset", ""),
        "fingerprint": version.tags.get("fingerprint", ""),
        "gate_decision": version.tags.get("gate_decision", ""),
        "source": version.source,
    }
