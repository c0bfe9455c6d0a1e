"""Notifications to people: a rejected challenger, a person's rejection, a failed run, an approval to give.

Every event is appended as one JSON line to a file (RXREC_NOTIFY_FILE, default
`<work dir>/var/notifications.jsonl`): the local channel, and the audit trail of every other one. A
real channel needs configuration only: RXREC_NOTIFY_WEBHOOK, a URL that takes a JSON POST with a `text`
field (Slack, Mattermost, Teams and Rocket.Chat incoming webhooks; a chat-ops or paging endpoint), or,
from Airflow, a connection holding that URL (RXREC_NOTIFY_CONN_ID, dags/rxrec_notify.py). A channel that
does not answer never fails the run it reports on: its error is returned (and logged) instead.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipelines.core.config import Paths
from pipelines.core.retry import RetryPolicy, ServiceUnavailable, call_with_retry

FILE_ENV = "RXREC_NOTIFY_FILE"
WEBHOOK_ENV = "RXREC_NOTIFY_WEBHOOK"
EVENTS = ("gate_rejected", "approval_requested", "approval_rejected", "run_failed")
WEBHOOK_POLICY = RetryPolicy(attempts=3, backoff_s=1.0, max_backoff_s=5.0, timeout_s=10.0)
log = logging.getLogger("rxrec.notify")


@dataclass
class Notification:
    """One event: what happened, in which run and task, why, and where to look (MLflow, Airflow)."""

    event: str
    dag_id: str
    dag_run_id: str
    task_id: str
    reason: str
    mlflow_url: str = ""
    airflow_url: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown notification event {self.event!r}; events are: {', '.join(EVENTS)}")

    def text(self) -> str:
        """One line a person reads in a chat channel."""
        where = f"{self.dag_id} run {self.dag_run_id}" + (f", task {self.task_id}" if self.task_id else "")
        links = " ".join(f"{name}: {url}" for name, url in (("MLflow", self.mlflow_url),
                                                             ("Airflow", self.airflow_url)) if url)
        return f"[rxrec] {self.event.replace('_', ' ')} in {where}: {self.reason}" + (f" ({links})" if links else "")


def notify_file() -> Path:
    """Where the JSON lines go: RXREC_NOTIFY_FILE, else var/notifications.jsonl of the work directory."""
    configured = os.environ.get(FILE_ENV, "").strip()
    return Path(configured) if configured else Paths().var / "notifications.jsonl"


def append_line(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended with a single write: lines of concurrent writers never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def post_webhook(url: str, notification: Notification, policy: RetryPolicy | None = None) -> None:
    """POST {"text": ..., "rxrec": event} as JSON, retried (WEBHOOK_POLICY) on connection errors and 503s."""
    policy = policy or WEBHOOK_POLICY
    body = json.dumps({"text": notification.text(), "rxrec": asdict(notification)}, default=str).encode()

    def send() -> None:
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=policy.timeout_s) as response:
            response.read()

    call_with_retry(send, service="notification webhook", url=redacted(url), policy=policy,
                    advice="check RXREC_NOTIFY_WEBHOOK / the notification connection")


def redacted(url: str) -> str:
    """The webhook without path and query: chat webhooks carry their secret there, logs must not."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "") + "/..."


def deliver(notification: Notification, webhook: str | None = None) -> dict[str, str]:
    """Append the event to the notification file, then POST it to the webhook (argument, else
    RXREC_NOTIFY_WEBHOOK) when there is one. Returns channel -> "ok" or the error; only the file is
    required (a broken local disk is the operator's problem to see), a webhook error is logged."""
    path = notify_file()
    append_line(path, asdict(notification))
    sent = {str(path): "ok"}
    url = (webhook if webhook is not None else os.environ.get(WEBHOOK_ENV, "")).strip()
    if url:
        try:
            post_webhook(url, notification)
            sent["webhook"] = "ok"
        except (ServiceUnavailable, OSError, ValueError) as exc:  # a chat outage must not fail the run
            sent["webhook"] = f"failed: {exc}"
            log.warning("notification %s not sent to the webhook %s: %s", notification.event, redacted(url), exc)
    return sent
