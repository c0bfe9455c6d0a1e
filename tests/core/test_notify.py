"""Notifications: one JSON line per event in the file, and a real webhook (a local HTTP server) when configured."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import Process

import pytest

from pipelines.core.notify import (
    FILE_ENV,
    WEBHOOK_ENV,
    Notification,
    append_line,
    deliver,
    notify_file,
    redacted,
)
from pipelines.core.retry import RetryPolicy


def _event(**changes) -> Notification:
    values = {"event": "approval_rejected", "dag_id": "retrain_and_promote", "dag_run_id": "manual__2026-12-01",
              "task_id": "approve_promotion", "reason": "rejected by admin: not now",
              "mlflow_url": "http://127.0.0.1:5000/#/experiments/1/runs/abc"}
    return Notification(**{**values, **changes})


@pytest.fixture()
def webhook() -> Iterator[dict]:
    """A real HTTP endpoint on 127.0.0.1 that records what it is sent and answers `status`."""
    seen: dict = {"bodies": [], "paths": [], "status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen["paths"].append(self.path)
            seen["bodies"].append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(seen["status"])
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen["url"] = f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/SECRET"
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def test_an_event_becomes_one_json_line_in_the_work_directory_by_default(workdir, monkeypatch):
    monkeypatch.delenv(FILE_ENV, raising=False)
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    sent = deliver(_event())
    path = workdir / "var" / "notifications.jsonl"
    assert notify_file() == path and sent == {str(path): "ok"}
    (line,) = path.read_text().splitlines()
    record = json.loads(line)
    assert record["event"] == "approval_rejected" and record["dag_run_id"] == "manual__2026-12-01"
    assert record["task_id"] == "approve_promotion" and record["reason"] == "rejected by admin: not now"
    assert record["mlflow_url"].endswith("/runs/abc") and record["at"].endswith("Z")


def test_the_file_is_configurable_and_lines_append(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere" / "events.jsonl"
    monkeypatch.setenv(FILE_ENV, str(target))
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    deliver(_event(event="gate_rejected", task_id="register", reason="ndcg_at_10 0.10 <= champion 0.12"))
    deliver(_event(event="run_failed", task_id="train_gpt4rec", reason="task_failure"))
    assert [json.loads(line)["event"] for line in target.read_text().splitlines()] == ["gate_rejected", "run_failed"]


def _append_many(path, worker: int) -> None:
    for i in range(200):
        append_line(path, {"worker": worker, "i": i, "pad": "x" * 300})


def test_concurrent_writers_never_interleave_lines(tmp_path):
    path = tmp_path / "n.jsonl"
    writers = [Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
    records = [json.loads(line) for line in path.read_text().splitlines()]  # every line parses
    assert len(records) == 800 and {(r["worker"], r["i"]) for r in records} == {(w, i) for w in range(4) for i in range(200)}


def test_an_unknown_event_is_refused():
    with pytest.raises(ValueError, match="unknown notification event 'rejected'.*approval_rejected"):
        _event(event="rejected")


def test_the_webhook_gets_a_chat_text_and_the_event(workdir, webhook, monkeypatch):
    monkeypatch.setenv(WEBHOOK_ENV, webhook["url"])
    sent = deliver(_event())
    assert sent["webhook"] == "ok" and webhook["paths"] == ["/hooks/T000/SECRET"]
    (body,) = webhook["bodies"]
    assert body["text"].startswith("[rxrec] approval rejected in retrain_and_promote run manual__2026-12-01, task "
                                   "approve_promotion: rejected by admin: not now")
    assert "MLflow: http://127.0.0.1:5000/#/experiments/1/runs/abc" in body["text"]
    assert body["rxrec"]["event"] == "approval_rejected"
    assert (workdir / "var" / "notifications.jsonl").exists(), "the file is written whatever the channel"


def test_a_channel_that_does_not_answer_is_reported_not_raised(workdir, webhook, monkeypatch, caplog):
    webhook["status"] = 503  # transient: retried, then given up
    monkeypatch.setattr("pipelines.core.notify.WEBHOOK_POLICY", RetryPolicy(attempts=2, backoff_s=0, timeout_s=5))
    sent = deliver(_event(), webhook=webhook["url"])
    assert sent["webhook"].startswith("failed: ") and len(webhook["bodies"]) == 2
    assert "SECRET" not in sent["webhook"] and "SECRET" not in caplog.text, "the webhook's secret path leaked"
    assert len((workdir / "var" / "notifications.jsonl").read_text().splitlines()) == 1


def test_redacted_keeps_only_scheme_host_and_port():
    assert redacted("https://hooks.slack.com/services/T0/B0/XYZ?x=1") == "https://hooks.slack.com/..."
    assert redacted("http://127.0.0.1:8123/hook/secret") == "http://127.0.0.1:8123/..."
