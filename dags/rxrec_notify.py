"""The rxrec notifier: events of retrain_and_promote that a person must hear about, as an Airflow notifier.

A challenger the gate rejected, a challenger a person rejected (or nobody approved in time), a failed
run, and an approval waiting for someone. Each goes through pipelines/core/notify.py: one JSON line in
RXREC_NOTIFY_FILE (default `<work dir>/var/notifications.jsonl`) with the dag run, task, reason and the
MLflow and Airflow links; plus a real channel by configuration only: RXREC_NOTIFY_WEBHOOK (a URL), or
RXREC_NOTIFY_CONN_ID naming an Airflow connection that holds the webhook URL (kept in Airflow's secrets,
e.g. AIRFLOW_CONN_RXREC_NOTIFY='https://hooks.slack.com/services/...'). Not a DAG file: .airflowignore
keeps the DAG processor from parsing it.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseNotifier

CONN_ENV = "RXREC_NOTIFY_CONN_ID"


def webhook_from_connection() -> str | None:
    """The webhook URL of the connection RXREC_NOTIFY_CONN_ID names (None when unset): its host when that is
    a whole URL (an `http` connection typed in the UI), else scheme://host[:port]/schema of a connection
    given as a URI (e.g. AIRFLOW_CONN_RXREC_NOTIFY='https://hooks.slack.com/services/T/B/X')."""
    conn_id = os.environ.get(CONN_ENV, "").strip()
    if not conn_id:
        return None
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    path = f"/{conn.schema.lstrip('/')}" if conn.schema else ""
    if conn.host and conn.host.startswith(("http://", "https://")):
        return conn.host.rstrip("/") + path
    scheme = conn.conn_type if conn.conn_type in ("http", "https") else "https"
    return f"{scheme}://{conn.host}" + (f":{conn.port}" if conn.port else "") + path


def airflow_url(dag_id: str, run_id: str, task_id: str) -> str:
    """The run's (or task's) page in the Airflow UI, from [api] base_url."""
    from airflow.sdk import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    if not base or not dag_id or not run_id:
        return ""
    return f"{base}/dags/{dag_id}/runs/{run_id}" + (f"/tasks/{task_id}" if task_id else "")


def event_from_context(event: str, context: Any, reason: str = "", mlflow_url: str = "",
                       details: dict[str, Any] | None = None):
    """A Notification from an Airflow context: a task's, or a DAG callback's (`reason` from the scheduler,
    `ti` = the last task instance of the run)."""
    from pipelines.core.notify import Notification

    ti = context.get("ti")
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", "") or getattr(ti, "dag_id", "")
    run_id = context.get("run_id") or getattr(ti, "run_id", "") or ""
    task_id = getattr(ti, "task_id", "") or ""
    why = reason or str(context.get("reason") or "")
    error = context.get("exception")
    if error is not None:
        why = f"{why}: {type(error).__name__}: {error}" if why else f"{type(error).__name__}: {error}"
    return Notification(event=event, dag_id=dag_id, dag_run_id=run_id, task_id=task_id,
                        reason=why or "(no reason given)", mlflow_url=mlflow_url,
                        airflow_url=airflow_url(dag_id, run_id, task_id), details=dict(details or {}))


def run_mlflow_url(run_id: str, task_id: str) -> str:
    """The MLflow page of this run (the task's stage run, else the parent run), '' when there is none."""
    from rxrec_links import task_run_url

    from pipelines.stages.dvc_run import RunWorkspace

    return task_run_url(RunWorkspace(run_id=run_id), task_id)[0]  # the notification matters more than its link


class RxrecNotifier(BaseNotifier):
    """Send one rxrec event (see pipelines/core/notify.py EVENTS) from a task, a callback or a HITL operator.

    `message` is the reason (else a DAG callback's own `reason`); without `mlflow_url` the run's MLflow page
    is looked up. Nothing is templated: a message can carry a person's comment, which must never be run
    as a Jinja template.
    """

    template_fields = ()

    def __init__(self, event: str, message: str = "", mlflow_url: str = "",
                 details: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.event = event
        self.message = message
        self.mlflow_url = mlflow_url
        self.details = details or {}

    def notify(self, context: Any) -> None:
        notification = event_from_context(self.event, context, self.message, self.mlflow_url, self.details)
        if not notification.mlflow_url and notification.dag_run_id:
            notification.mlflow_url = run_mlflow_url(notification.dag_run_id, notification.task_id)
        from pipelines.core.notify import deliver

        sent = deliver(notification, webhook=webhook_from_connection())
        self.log.info("rxrec notification %s: %s", notification.event, sent)
