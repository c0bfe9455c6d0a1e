"""A person rejects a challenger in the real Airflow: nothing changes, one notice, and every task links to MLflow.

Real components: the session's Airflow 3 (with the triggerer and the rxrec plugin) and MLflow tracking
server (tests/e2e/airflow/conftest.py `airflow_server`). `retrain_and_promote` is triggered through the REST API
with `require_approval` on and the session's tiny world, registering under a model name of its own (so the
gate has no champion to beat and always asks, whatever other tests promoted). The test waits until
`approve_promotion` asks (state awaiting_input, body = the gate's decision on validation), answers
Reject through the REST API's hitlDetails, and checks: no champion alias (and the session's `gpt4rec`
champion untouched), nothing deployed, promote_champion/deploy skipped, one `approval_rejected` line for
this run in the notification file, and the "MLflow run" extra link of the task pages pointing at the
runs MLflow holds.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # services (420 s), a full run to the gate, the rest
DAG_ID = "retrain_and_promote"
TO_THE_GATE_S = 1200  # a run that trains everything on the tiny world (DVC restores what the session trained)
APPROVAL, PROMOTE = "approve_promotion", "promote_champion"
MODEL = "rxrec_approval_e2e"  # a registered model of its own: no champion yet, so the gate passes and asks


def _alias(client, model: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


def _wait_until_the_scheduler_saw_the_deferral_exit(server, run_id: str, timeout_s: float = 180) -> None:
    """A person answers minutes later; a test answers at once. Airflow 3 marks a resumed task failed when the
    scheduler drains the success event of its deferral exit only after the resumed attempt started
    (apache/airflow#71580, #72716; fix pending in #71579). So answer only once the scheduler has seen it."""
    needle = (f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{DAG_ID}', "
              f"task_id='{APPROVAL}', run_id='{run_id}'")
    log = server.home / "logs" / "scheduler.log"
    deadline = time.monotonic() + timeout_s
    while needle not in (log.read_text(errors="replace") if log.exists() else ""):
        assert time.monotonic() < deadline, f"the scheduler did not log the deferral exit within {timeout_s} s: {log}"
        time.sleep(1)


def _wait_for(server, run_id: str, until, what: str, timeout_s: float) -> dict[str, str | None]:
    deadline = time.monotonic() + timeout_s
    while True:
        run = server.api(f"dags/{DAG_ID}/dagRuns/{run_id}")
        states = server.task_states(run_id)
        if until(run, states):
            return states
        assert run["state"] not in ("success", "failed"), f"run {run_id} ended {run['state']} before {what}: {states}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s: {states}"
        time.sleep(5)


def test_a_rejected_challenger_changes_nothing_is_notified_and_tasks_link_to_mlflow(airflow_server, retrain_conf,
                                                                                   retrain_runs):
    """After the session's two runs (`retrain_runs`: their first must be the one that trains everything)."""
    from mlflow import MlflowClient

    server = airflow_server
    client = MlflowClient(tracking_uri=server.mlflow_url, registry_uri=server.mlflow_url)
    served_champion = _alias(client, "gpt4rec", "champion")  # another test's run may have promoted one
    served_files = sorted(p for p in server.triton_repo.rglob("*") if p.is_file())
    conf = {**retrain_conf, "require_approval": True, "gate_latency_budget_ms": 0,
            "extra_overrides": [*retrain_conf["extra_overrides"], f"mlflow.registered_model={MODEL}"]}
    run_id = server.trigger(conf)
    started = time.monotonic()
    _wait_for(server, run_id, lambda run, s: s.get(APPROVAL) == "awaiting_input", f"{APPROVAL} asks", TO_THE_GATE_S)
    print(f"\n{APPROVAL} waits for a person after {time.monotonic() - started:.0f} s")
    hitl = f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{APPROVAL}/-1/hitlDetails"
    detail = server.api(hitl)
    assert detail["options"] == ["Approve", "Reject"] and detail["response_received"] is False
    assert detail["subject"].startswith(f"Make {MODEL} v") and "**passed**" in detail["body"]
    assert "| metric (validation) |" in detail["body"]
    assert "test split" not in detail["body"] and "report only" not in detail["body"]  # decided on validation
    challenger = _alias(client, MODEL, "challenger")
    assert challenger and _alias(client, MODEL, "champion") is None, "register moved champion before the approval"

    _wait_until_the_scheduler_saw_the_deferral_exit(server, run_id)
    server.api(hitl, {"chosen_options": ["Reject"], "params_input": {"comment": "e2e says no"}}, method="PATCH")
    run = server.wait(run_id, 600)
    assert run.state == "success", run.failure
    assert run.states[APPROVAL] == "success" and run.states["record_run"] == "success", run.states
    assert {run.states[t] for t in (PROMOTE, "deploy", "serve_check", "build_tensorrt_engine")} == {"skipped"}, \
        run.states

    assert _alias(client, MODEL, "champion") is None, "a rejected challenger became champion"
    assert _alias(client, MODEL, "challenger") == challenger
    assert _alias(client, "gpt4rec", "champion") == served_champion
    assert sorted(p for p in server.triton_repo.rglob("*") if p.is_file()) == served_files, "Triton's repository changed"

    lines = [json.loads(line) for line in (server.work / "var" / "notifications.jsonl").read_text().splitlines()]
    mine = [n for n in lines if n["dag_run_id"] == run_id]
    assert [n["event"] for n in mine] == ["approval_requested", "approval_rejected"], mine
    rejected = mine[1]
    assert rejected["task_id"] == APPROVAL and rejected["reason"].startswith("rejected by admin: e2e says no")
    assert rejected["mlflow_url"].startswith(server.mlflow_url + "/#/experiments/")
    assert rejected["airflow_url"].endswith(f"/dags/{DAG_ID}/runs/{run_id}/tasks/{APPROVAL}")

    links = {task: server.api(f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task}/links")["extra_links"]
             for task in ("train_gpt4rec", "register", APPROVAL, "record_run")}
    pages = {task: link["MLflow run"] for task, link in links.items()}
    assert all(page and page.startswith(server.mlflow_url + "/#/experiments/") for page in pages.values()), links
    run_ids = {task: page.rsplit("/runs/", 1)[1] for task, page in pages.items()}
    assert run_ids["register"] == run_ids[APPROVAL] == run_ids["record_run"]  # the DAG run's parent run
    if run_ids["train_gpt4rec"] != run_ids["register"]:  # it trained in this run (else DVC restored it: the parent)
        trained = client.get_run(run_ids["train_gpt4rec"])
        assert trained.data.tags.get("model_family") == "gpt4rec"
        assert trained.data.tags["mlflow.parentRunId"] == run_ids["register"]
    assert client.get_run(run_ids["register"]).data.tags.get("gate.decision") == "dry-run"
