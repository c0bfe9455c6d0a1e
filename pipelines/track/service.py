"""MLflow behind one service object: tracking runs, the model registry, and the retry policy of every call.

Runs are laid out for the MLflow compare view: one parent run per pipeline run (found again by its run
key, pipelines/track/live.py, so a retried task or a later stage does not open a second one) and one
child run per model family with the same metric names (valid_* while training, then hr_at_10,
ndcg_at_10, mrr, coverage_at_10, train_seconds), opened live by the training stage and completed by
`register`. The GPT4Rec child run holds the ONNX model (signature, input example, linked metrics),
registered as a new version; what the aliases mean and when they move is
the promotion package's business (pipelines/promotion/).

A `MlflowService` is built once per task (`MlflowService.from_settings`) and holds its own
MlflowClient for that store. Every call goes through the retry policy the service was built with:
transient failures (server down, restarting, timing out) are retried with exponential backoff
(params.yaml `service_retries`), then fail with `ServiceUnavailable` naming the URL and what to do.
MLflow's own HTTP retries are turned off for a server URI so that this policy is the one in control
of how long a task waits.
"""

from __future__ import annotations

import functools
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipelines.core.contract import EVENT_TYPES_NAME, INPUT_NAME
from pipelines.core.retry import RetryPolicy, call_with_retry, is_transient
from pipelines.track.live import DatasetRef, current_run_key

if TYPE_CHECKING:
    import numpy as np
    import onnx
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

    from mlflow import ActiveRun, MlflowClient
    from pipelines.core.config import Paths, Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_TAG = "gate_decision"  # model-version tag set when the gate has decided on that version
PARENT_TAG = "rxrec.pipeline_run"
RUN_KEY_TAG = "rxrec.run_key"  # the parent run's key: Airflow's dag run id, RXREC_RUN_ID or a local invocation
FAMILY_TAG = "model_family"
METHOD_TAG = "method"  # names an embedding method's child run (not a model family: no leaderboard row)
ADVICE = ("Start the MLflow server (mlflow/server.sh) or point mlflow.tracking_uri / RXREC_MLFLOW_TRACKING_URI at "
          "one that runs, then run the task again: the registry was not changed by the failed call, and a re-run "
          "reuses a version already registered for the same fingerprint.")

F = TypeVar("F", bound=Callable[..., Any])


def _retried(method: F) -> F:
    """Run a service call under the service's retry policy (a call made inside another is not retried twice)."""

    @functools.wraps(method)
    def wrapper(self: MlflowService, *args: Any, **kwargs: Any) -> Any:
        if getattr(self._calling, "active", False):
            return method(self, *args, **kwargs)
        self._calling.active = True
        try:
            return call_with_retry(lambda: method(self, *args, **kwargs), service="MLflow", url=self.tracking_uri,
                                   policy=self.retry, advice=ADVICE, what=method.__name__)
        finally:
            self._calling.active = False

    return wrapper  # type: ignore[return-value]


def _lost_insert_race(exc: BaseException) -> bool:
    """The store refused a row that a concurrent request inserted first (SQLite or PostgreSQL wording)."""
    text = str(exc).lower()
    return "unique constraint failed" in text or "duplicate key value violates unique constraint" in text


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@dataclass
class MlflowService:
    """One MLflow store (tracking and registry), one experiment, one retry policy for every call.

    A local artifact folder is only used with a local store: a tracking server decides (and proxies)
    where artifacts go.
    """

    tracking_uri: str
    experiment: str
    artifact_root: Path | None
    retry: RetryPolicy
    client: MlflowClient = field(init=False, repr=False)
    _experiment_id: str | None = field(default=None, init=False, repr=False)
    _calling: threading.local = field(default_factory=threading.local, init=False, repr=False)

    def __post_init__(self) -> None:
        from mlflow import MlflowClient

        self._set_mlflow_environment()
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @classmethod
    def from_settings(cls, settings: Settings, paths: Paths, experiment: str | None = None) -> MlflowService:
        """The store, experiment and retry policy params.yaml names (`experiment` overrides the experiment)."""
        return cls(paths.tracking_uri(settings), experiment or settings.mlflow.experiment, paths.mlflow_artifacts,
                   RetryPolicy.from_settings(settings.service_retries))

    def _set_mlflow_environment(self) -> None:
        """The settings MLflow reads only from the process environment, at each request.

        MLflow's HTTP client takes its retry count and timeout from these variables, nowhere else. One
        HTTP attempt per call with a bounded wait: our policy does the retrying (MLflow's default of 7
        retries with backoff 2 would hold a task for minutes before anyone hears of it). Synchronous
        logging, so a logged value is in the store when the call returns (and a failure is ours to retry).
        """
        import os

        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        if _is_server(self.tracking_uri):
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(self.retry.timeout_s)))

    def _point_fluent_api(self) -> None:
        """mlflow.start_run, log_model and register_model have no client: they use the process-wide URIs."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    # ------------------------------------------------------------------ experiment and runs

    @property
    def experiment_id(self) -> str:
        """The experiment's id, created on first use."""
        if self._experiment_id is None:
            self._experiment_id = self._find_or_create_experiment()
        return self._experiment_id

    @_retried
    def _find_or_create_experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        from mlflow.exceptions import MlflowException

        local = self.artifact_root is not None and not _is_server(self.tracking_uri)
        try:
            return self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_root.resolve().as_uri() if local else None)
        except MlflowException:
            # Parallel training stages start at once: another one may have created it between our two calls.
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    @contextmanager
    def start_run(self, run_name: str) -> Iterator[ActiveRun]:
        """A fluent MLflow run in this experiment (mlflow.log_* inside the block write to it)."""
        import mlflow

        experiment_id = self.experiment_id
        self._point_fluent_api()
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            yield run

    @_retried
    def pipeline_run(self, run_key: str, name: str, tags: dict[str, str]) -> str:
        """The parent run of this pipeline run, found by its run key, else created.

        An empty key is the current invocation's (`current_run_key`: Airflow's dag run id, RXREC_RUN_ID,
        the enclosing `dvc repro`, else this process), so every stage of one run lands under one parent.
        """
        key = run_key or current_run_key()
        return self._one_run(f"tags.`{PARENT_TAG}` = 'true' and tags.`{RUN_KEY_TAG}` = '{key}'",
                             name, {**tags, PARENT_TAG: "true", RUN_KEY_TAG: key})

    @_retried
    def child_run(self, parent_id: str, family: str, tags: dict[str, str], by: str = FAMILY_TAG) -> str:
        """The child run of one model family under the parent (reused when a task is retried).

        `by` is the tag that names it: `model_family`, or `method` for an embedding method's run.
        """
        return self._one_run(f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`{by}` = '{family}'",
                             family, {**tags, "mlflow.parentRunId": parent_id, by: family})

    def _one_run(self, filter_string: str, name: str, tags: dict[str, str]) -> str:
        """The run matching `filter_string` (given `tags` added, e.g. register's lineage tags on the run a
        training stage opened), created when there is none.

        Two tasks starting at once may both create one: each then keeps the oldest and deletes its own
        extra, so they agree on one run without a lock (the store may be shared by several machines).
        """
        from mlflow.entities import RunTag

        found = self._matching_runs(filter_string)
        if found:
            run = found[0]
            new_tags = [RunTag(k, str(v)[:5000]) for k, v in tags.items() if run.data.tags.get(k) != str(v)]
            if new_tags:
                self.client.log_batch(run.info.run_id, tags=new_tags)
            return run.info.run_id
        created = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        oldest = self._matching_runs(filter_string)[0].info.run_id
        if oldest != created:
            self.client.delete_run(created)
        return oldest

    def _matching_runs(self, filter_string: str) -> list[Run]:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=50)
        return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))

    @contextmanager
    def live_run(self, run_id: str, *, system_metrics: bool = True) -> Iterator[ActiveRun]:
        """Resume an existing run as the active fluent run, sampling system metrics (CPU, memory, GPU)
        in the background while the block runs; the run is FINISHED (or FAILED) when it ends."""
        import mlflow

        self._point_fluent_api()
        with mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics) as run:
            yield run

    @_retried
    def log_step_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """Metrics of one step (an epoch) in one batch call, so MLflow draws them as curves."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    @_retried
    def log_dataset(self, run_id: str, dataset: DatasetRef, context: str = "training") -> None:
        """The data a run trained on as an MLflow dataset input: its name, content hash and DVC remote path."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with warnings.catch_warnings():  # a local path matches two equivalent local source types
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(dataset.source)
        entity = MetaDataset(source, name=dataset.name, digest=dataset.digest)._to_mlflow_entity()
        inputs = [DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        try:
            self.client.log_inputs(run_id, inputs)
        except MlflowException as exc:
            # Parallel stages log the same dataset: the server looks for the row, then inserts it, so the one that
            # inserts second is refused by the unique key. The row is there now, and the same call links it.
            if not _lost_insert_race(exc):
                raise
            self.client.log_inputs(run_id, inputs)

    def run_url(self, run_id: str) -> str:
        """The run's page in the MLflow UI of a tracking server ('' for a local store, which has no UI URL)."""
        if not _is_server(self.tracking_uri):
            return ""
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"

    @_retried
    def log_values(self, run_id: str, *, params: dict[str, Any] | None = None,
                   metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
        """Params, metrics and tags of one run in one batch call (params truncated to MLflow's limit)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        existing = self.client.get_run(run_id).data.params
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)[:500]) for k, v in (params or {}).items() if k not in existing],
            tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()],
        )

    @_retried
    def log_artifacts(self, run_id: str, artifacts: dict[str, Path]) -> None:
        """Files and folders into the run's artifact store, under the given artifact paths."""
        for artifact_path, local in artifacts.items():
            if local.is_dir():
                self.client.log_artifacts(run_id, str(local), artifact_path=artifact_path)
            elif local.exists():
                self.client.log_artifact(run_id, str(local), artifact_path=artifact_path)

    @_retried
    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    # ------------------------------------------------------------------ registered versions

    @_retried
    def find_version(self, model_name: str, fp: str) -> ModelVersion | None:
        """The registered version carrying this fingerprint, if any."""
        for version in self.client.search_model_versions(f"name='{model_name}'"):
            if version.tags.get("fingerprint") == fp:
                return version
        return None

    @_retried
    def get_version(self, model_name: str, version: str) -> ModelVersion:
        return self.client.get_model_version(model_name, version)

    @_retried
    def tag_version(self, model_name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(model_name, version, key, value)

    @_retried
    def log_onnx_model(self, run_id: str, onnx_path: Path, model_name: str, tags: dict[str, str]) -> str:
        """Log the ONNX file as the run's model and register it; returns the new version number.

        The model carries its signature and an input example (read off the graph, so the served tensor
        contract is what MLflow shows); MLflow links the run's step-0 metrics (the final ones, not the
        per-epoch curves) to the logged model. With a
        `fingerprint` tag, a version already carrying it is returned instead (a retried call, or a task
        killed after registering, never makes a second version of the same model).
        """
        import onnx

        import mlflow

        if tags.get("fingerprint"):
            existing = self.find_version(model_name, tags["fingerprint"])
            if existing is not None:
                return str(existing.version)
        model = onnx.load(str(onnx_path))
        self._point_fluent_api()
        with mlflow.start_run(run_id=run_id):
            info = mlflow.onnx.log_model(onnx_model=model, name="model", pip_requirements=["onnxruntime", "numpy"],
                                         save_as_external_data=False, signature=onnx_signature(model),
                                         input_example=onnx_input_example(model))
        version = mlflow.register_model(info.model_uri, model_name, tags={**tags, "run_id": run_id})
        return str(version.version)

    @_retried
    def describe_version(self, model_name: str, version: str, markdown: str) -> None:
        """The registered version's description (Markdown, shown on its page): e.g. the gate's decision table."""
        self.client.update_model_version(model_name, version, description=markdown)

    @_retried
    def download_model(self, model_uri: str, dst: Path) -> Path:
        """Fetch a registered model's ONNX file (e.g. models:/gpt4rec@champion) to dst/model.onnx."""
        import mlflow

        # models:/ URIs resolve their version through the process-wide registry URI, whatever is passed below
        self._point_fluent_api()
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst),
                                                         tracking_uri=self.tracking_uri,
                                                         registry_uri=self.tracking_uri))
        found = sorted(local.rglob("*.onnx"))
        if not found:
            raise FileNotFoundError(f"no .onnx file in the artifacts of {model_uri}")
        return found[0]

    @_retried
    def download_run_file(self, run_id: str, artifact_path: str, dst: Path) -> Path | None:
        """One file of a run's artifacts (e.g. user_vectors/users.npz) into dst; None when the run holds no such file."""
        folder, _, name = artifact_path.rpartition("/")
        self._point_fluent_api()  # artifact repositories a run path resolves to may read the process-wide URI
        if name not in {Path(f.path).name for f in self.client.list_artifacts(run_id, folder or None)}:
            return None
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    # ------------------------------------------------------------------ aliases and registered-model tags

    @_retried
    def alias_version(self, model_name: str, alias: str) -> ModelVersion | None:
        """The model version an alias points to, or None when the alias (or model) does not exist.

        A server that does not answer is an error, not "no champion": the gate must never decide as if
        there were none because the registry was unreachable.
        """
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(model_name, alias)
        except MlflowException as exc:
            if is_transient(exc):
                raise
            return None

    @_retried
    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name, alias, version)

    @_retried
    def delete_alias(self, model_name: str, alias: str) -> None:
        self.client.delete_registered_model_alias(model_name, alias)

    @_retried
    def model_tag(self, model_name: str, key: str) -> str | None:
        """A tag of the registered model (not of one version)."""
        return self.client.get_registered_model(model_name).tags.get(key)

    @_retried
    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(model_name, key, value)

    # ------------------------------------------------------------------ lineage

    @_retried
    def lineage(self, model_uri: str) -> dict[str, Any]:
        """The chain behind MODEL@ALIAS or MODEL/VERSION: version, MLflow runs, commit, data hash, dataset, DAG run."""
        if "@" in model_uri:
            name, alias = model_uri.split("@", 1)
            version = self.alias_version(name, alias)
            if version is None:
                raise KeyError(f"model {name!r} has no alias {alias!r}")
        elif "/" in model_uri:
            name, number = model_uri.split("/", 1)
            version = self.client.get_model_version(name, number)
        else:
            raise ValueError(f"{model_uri!r} must look like MODEL@ALIAS or MODEL/VERSION, e.g. gpt4rec@champion")
        run = self.client.get_run(version.run_id)
        parent_id = run.data.tags.get("mlflow.parentRunId", "")
        parent = self.client.get_run(parent_id) if parent_id else None
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
            "gate_decision": version.tags.get(GATE_TAG, ""),
            "source": version.source,
        }


# --------------------------------------------------------------------------- the ONNX model's signature

# A left-padded session and its event kinds: the input example of the served contract.
_EXAMPLE_ROWS = {INPUT_NAME: [[0, 1, 2]], EVENT_TYPES_NAME: [[0, 1, 1]]}


def _tensor_specs(values: list[onnx.ValueInfoProto]) -> list[Any]:
    """MLflow tensor specs of graph inputs or outputs; a named or unknown dimension is -1 (any size)."""
    from mlflow.types import TensorSpec
    from onnx import helper

    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim]
        specs.append(TensorSpec(helper.tensor_dtype_to_np_dtype(tensor.elem_type), tuple(shape), value.name))
    return specs


def onnx_signature(model: onnx.ModelProto) -> Any:
    """The served contract as an MLflow signature: input_ids (and event_types when the graph reads them)
    int64 [-1, -1] in, item_ids and scores out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema

    return ModelSignature(inputs=Schema(_tensor_specs(list(model.graph.input))),
                          outputs=Schema(_tensor_specs(list(model.graph.output))))


def onnx_input_example(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """One short session per graph input (zeros of the input's type for an input not in the contract)."""
    import numpy as np
    from onnx import helper

    example = {}
    for value in model.graph.input:
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        rank = len(value.type.tensor_type.shape.dim)
        rows = _EXAMPLE_ROWS.get(value.name)
        example[value.name] = (np.asarray(rows, dtype=dtype) if rows is not None and rank == 2
                               else np.zeros([1] * rank, dtype=dtype))
    return example
