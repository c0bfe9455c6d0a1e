"""The "MLflow run" button on every task page of retrain_and_promote (an Airflow 3 operator extra link).

When a task ends (also when it fails) it looks up the MLflow run of its stage: the child run its stage
trained in (a model family's `model_family` tag, an embedding method's `method` tag) under the DAG run's
parent run, else that parent run (tagged `rxrec.run_key` = the dag run id), where `register` logs the
gate's decision. It prints the URL in its log and keeps it as XCom `mlflow_run_url`; `MlflowRunLink` reads
it from there in the worker when the task finishes, and Airflow stores the result (XCom
`_link_MlflowRunLink`), which the API server shows without asking MLflow. Registered by the rxrec plugin
(infra/airflow/plugins/rxrec_plugin.py) for no operator class: a plugin link matched to an operator would
replace that stored link in the API server and run `get_link` there, where the task SDK cannot read XCom.

MLflow URLs need a web UI: the tracking server's own address, or RXREC_MLFLOW_UI_URL where people browse
the store (compose: the host's published port; the embedded SQLite store of `make airflow` when a
`make mlflow` server serves it). Without one the log says so and the button stays disabled. Not a DAG
file: .airflowignore keeps the DAG processor from parsing it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from pipelines.stages.dvc_run import RunWorkspace

MLFLOW_URL_KEY = "mlflow_run_url"  # XCom of each task: its MLflow run's page ('' when there is none)
UI_ENV = "RXREC_MLFLOW_UI_URL"
LOOKUP_TIMEOUT_S = 10  # a link is not worth holding a task: one HTTP attempt, bounded


class MlflowRunLink(BaseOperatorLink):
    """The task's MLflow run, from the URL the task kept in XCom when it ended."""

    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=MLFLOW_URL_KEY) or ""


class MlflowLinkedPythonOperator(PythonOperator):
    """A PythonOperator whose task page has the "MLflow run" button."""

    operator_extra_links = (MlflowRunLink(),)



def ui_base(tracking_uri: str) -> str:
    """Where people open this store's runs: RXREC_MLFLOW_UI_URL, else a tracking server's own URL, else ''."""
    configured = os.environ.get(UI_ENV, "").strip()
    if configured:
        return configured.rstrip("/")
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else ""


def run_page(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"


def find_task_run(tracking_uri: str, experiment: str, run_key: str, task_id: str) -> tuple[str, str] | None:
    """(experiment id, run id) of the task's MLflow run, or None before the DAG run has a parent run."""
    from mlflow import MlflowClient
    from pipelines.track.service import FAMILY_TAG, METHOD_TAG, PARENT_TAG, RUN_KEY_TAG

    if "'" in run_key or "'" in task_id:
        return None  # not a run id Airflow makes; MLflow's filter syntax could not quote it
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(LOOKUP_TIMEOUT_S)
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    experiment_id = found.experiment_id
    parents = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = 'true' and tags.`{RUN_KEY_TAG}` = "
                                 f"'{run_key}'", max_results=5, order_by=["attributes.start_time ASC"])
    if not parents:
        return None
    parent = parents[0].info.run_id
    tag, name = (FAMILY_TAG, task_id.removeprefix("train_")) if task_id.startswith("train_") else (METHOD_TAG, task_id)
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{tag}` = "
                                  f"'{name}'", max_results=5, order_by=["attributes.start_time ASC"])
    return experiment_id, children[0].info.run_id if children else parent


def workspace_tracking(ws: RunWorkspace) -> tuple[str, str]:
    """(tracking URI, experiment) the run's stages log to: the workspace's params, the state's store."""
    from pipelines.core.config import load_settings

    params = ws.path / "params.yaml"
    settings = load_settings(params_file=params) if params.exists() else load_settings()
    return settings.mlflow.tracking_uri or ws.env()["RXREC_MLFLOW_TRACKING_URI"], settings.mlflow.experiment


def task_run_url(ws: RunWorkspace, task_id: str) -> tuple[str, str]:
    """(the task's MLflow run page or '', the log line that says which or why none); never raises."""
    from mlflow.exceptions import MlflowException

    try:
        tracking_uri, experiment = workspace_tracking(ws)
        ui = ui_base(tracking_uri)
        if not ui:
            return "", (f"MLflow run: no link, the store {tracking_uri} has no web UI (start `make mlflow` before "
                        f"`make airflow`, or set {UI_ENV})")
        found = find_task_run(tracking_uri, experiment, ws.run_id, task_id)
    except (MlflowException, OSError, ValueError) as exc:  # a link never fails the task
        return "", f"MLflow run: the link could not be looked up ({type(exc).__name__}: {exc})"
    if not found:
        return "", f"MLflow run: none yet for {ws.run_id!r} in {tracking_uri}"
    url = run_page(ui, *found)
    return url, f"MLflow run: {url}"


def publish_mlflow_link(ws: RunWorkspace, task_id: str, ti: Any) -> str:
    """Find the task's MLflow run page, print it in the task log and keep it as XCom for the button."""
    url, line = task_run_url(ws, task_id)
    print(line)
    ti.xcom_push(key=MLFLOW_URL_KEY, value=url)
    return url
