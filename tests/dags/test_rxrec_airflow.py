"""The Airflow side of the loop, without a running Airflow: the notifier, the MLflow links, the approval wiring.

Airflow reads its configuration once, at import, and configures logging for the whole process, so the
checks run in a fresh interpreter with a private AIRFLOW_HOME (as tests/e2e/airflow/test_dag.py does) and report
JSON back; this process never imports airflow. Real pieces: Airflow's notifier and connection classes, a
local MLflow store with the runs the stages create (pipelines.track.service), a webhook on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"

# Each check runs Airflow itself (its own processes, metadata DB and, for the links, the API server): slow.
pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, os, sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, sys.argv[1])
import retrain_and_promote as m
from rxrec_links import MlflowRunLink, find_task_run, run_page, ui_base
from rxrec_notify import RxrecNotifier, webhook_from_connection

out = {}
# --- the notifier, as a DAG failure callback calls it (the scheduler's reason, the last task instance)
ti = SimpleNamespace(task_id="train_gpt4rec", dag_id="retrain_and_promote", run_id="manual__run1")
RxrecNotifier("run_failed")({"dag": m.retrain_and_promote_dag, "run_id": "manual__run1", "reason": "task_failure",
                             "ti": ti})
RxrecNotifier("gate_rejected", message="ndcg too low {{ conf }}", mlflow_url="http://mlflow/#/x")(
    {"dag": m.retrain_and_promote_dag, "run_id": "manual__run2", "ti": ti})
out["webhook_from_connection"] = webhook_from_connection()

# --- a person's Reject, as Airflow resumes the approval task with it (and a timeout's default)
dag = m.retrain_and_promote_dag
approval = dag.task_dict["approve_promotion"]
fake_ti = SimpleNamespace(task_id="approve_promotion", dag_id="retrain_and_promote", run_id="manual__run3",
                          map_index=-1, xcom_pull=lambda **kw: "http://mlflow/#/gate")
resumed = {}
for who, user in (("person", {"id": "admin", "name": "admin"}), ("timeout", None)):
    event = {"chosen_options": ["Reject"], "params_input": {"comment": "not this week"} if user else {},
             "responded_at": __import__("datetime").datetime.now(), "responded_by_user": user}
    try:
        approval.execute_complete({"dag": dag, "run_id": "manual__run3", "ti": fake_ti, "task": approval}, event)
        resumed[who] = "returned"
    except BaseException as exc:  # Airflow 3 skips downstream by raising; with this stand-in ti it fails
        resumed[who] = type(exc).__name__
out["resumed"] = resumed
out["lines"] = [json.loads(l) for l in Path(os.environ["RXREC_NOTIFY_FILE"]).read_text().splitlines()]
out["approval"] = {"class": type(dag.task_dict["approve_promotion"]).__name__,
                   "upstream": sorted(dag.task_dict["approve_promotion"].upstream_task_ids),
                   "promote_upstream": sorted(dag.task_dict["promote_champion"].upstream_task_ids),
                   "deploy_upstream_has_promote": "promote_champion" in dag.task_dict["deploy"].upstream_task_ids,
                   "defaults": dag.task_dict["approve_promotion"].defaults,
                   "hitl_params": sorted(dag.task_dict["approve_promotion"].params)}
out["links"] = {t.task_id: [type(l).__name__ for l in t.operator_extra_links] for t in dag.tasks}
# What the API server does with the task page's link: the serialized DAG, read back with the plugins loaded.
from airflow import plugins_manager
from airflow.serialization.serialized_objects import DagSerialization

out["plugin_links"] = [type(l).__name__ for l in plugins_manager.get_operator_extra_links()]
served = DagSerialization.from_dict(DagSerialization.to_dict(dag))
out["served_links"] = {t.task_id: {n: type(l).__name__ for n, l in t.operator_extra_link_dict.items()}
                       for t in served.tasks}
out["on_failure"] = [type(c).__name__ for c in (dag.on_failure_callback if isinstance(dag.on_failure_callback, list)
                                                  else [dag.on_failure_callback])]
out["overrides"] = {name: [o for o in m.overrides_from_params(p) if o.startswith("gate.promote")] for name, p in {
    "auto": {"promote": True}, "approval": {"promote": True, "require_approval": True},
    "dry": {"promote": False, "require_approval": True}}.items()}
out["withheld"] = {name: m.promotion_withheld(p, approved) for name, (p, approved) in {
    "auto": ({"promote": True}, False), "off": ({"promote": False}, False),
    "waiting": ({"promote": True, "require_approval": True}, False),
    "approved": ({"promote": True, "require_approval": True}, True)}.items()}
on = {"promote": True, "require_approval": True}
passed = {"model_name": "gpt4rec", "version": "3", "reused": False, "reason": "dry run",
          "gate": {"promote": True, "applied": False, "reason": "ok"}}
out["nothing_to_approve"] = {
    "off": m.nothing_to_approve({"promote": True}, None),
    "skipped": m.nothing_to_approve(on, {"outcome": "skipped", "records": {}}),
    "rejected": m.nothing_to_approve(on, {"outcome": "ran", "records": {m.REGISTRY_RECORD: {
        **passed, "gate": {"promote": False, "applied": False, "reason": "worse"}}}}),
    "asks": m.nothing_to_approve(on, {"outcome": "ran_outside_dvc", "records": {m.REGISTRY_RECORD: passed}})}

# --- the MLflow run each task links to, in a store filled the way the stages fill it
from pipelines.core.retry import RetryPolicy
from pipelines.track.service import FAMILY_TAG, METHOD_TAG, MlflowService

uri = "sqlite:///" + os.path.join(sys.argv[2], "mlflow.db")
service = MlflowService(uri, "rxrec", Path(sys.argv[2]) / "mlartifacts", RetryPolicy(attempts=1))
parent = service.pipeline_run("manual__run1", "pipeline manual__run1", {})
gpt = service.child_run(parent, "gpt4rec", {}, by=FAMILY_TAG)
p2v = service.child_run(parent, "prod2vec", {}, by=METHOD_TAG)
service.pipeline_run("manual__other", "pipeline manual__other", {})
found = {task: find_task_run(uri, "rxrec", "manual__run1", task) for task in ("train_gpt4rec", "prod2vec", "register")}
out["runs"] = {task: (f[1] if f else None) for task, f in found.items()}
out["expected_runs"] = {"train_gpt4rec": gpt, "prod2vec": p2v, "register": parent}
out["unknown_run"] = find_task_run(uri, "rxrec", "manual__never", "register")
out["no_experiment"] = find_task_run(uri, "nope", "manual__run1", "register")
out["page"] = run_page("http://ui:5000", found["register"][0], parent)
out["ui"] = {"server": ui_base("http://mlflow:5000/"), "sqlite": ui_base(uri)}
os.environ["RXREC_MLFLOW_UI_URL"] = "http://localhost:5000/"
out["ui"]["configured"] = ui_base(uri)
out["link_name"] = MlflowRunLink().name
print("RESULT=" + json.dumps(out, default=str))
"""


@pytest.fixture()
def webhook() -> Iterator[dict]:
    seen: dict = {"bodies": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen["bodies"].append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seen["url"] = f"http://127.0.0.1:{server.server_address[1]}/hooks/rxrec"
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def checks_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("rxrec_airflow")
    home = root / "airflow"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RXREC_", "MLFLOW_"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
               AIRFLOW__CORE__UNIT_TEST_MODE="False", AIRFLOW__API__BASE_URL="http://127.0.0.1:8080",
               RXREC_WORKDIR=str(root / "work"), RXREC_NOTIFY_FILE=str(root / "notifications.jsonl"),
               RXREC_RETRAIN_SCHEDULE="none", GIT_PYTHON_REFRESH="quiet",
               AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "infra" / "airflow" / "plugins"),
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env["ROOT"] = str(root)
    return env


def _run_checks(env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(DAGS), env["ROOT"]], env=env, capture_output=True,
                          text=True, timeout=240, cwd=env["ROOT"], check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT="))
    return json.loads(line.removeprefix("RESULT="))


@pytest.fixture(scope="module")
def checks(checks_env, request) -> dict:
    return _run_checks(checks_env)


def test_the_notifier_writes_one_line_per_event_with_run_task_reason_and_links(checks):
    failed, rejected = checks["lines"][:2]
    assert failed["event"] == "run_failed" and failed["dag_run_id"] == "manual__run1"
    assert failed["task_id"] == "train_gpt4rec" and failed["reason"] == "task_failure"
    assert failed["airflow_url"] == "http://127.0.0.1:8080/dags/retrain_and_promote/runs/manual__run1/tasks/train_gpt4rec"
    assert failed["mlflow_url"] == "", "the embedded store has no web UI: no link rather than a wrong one"
    assert rejected["event"] == "gate_rejected"
    assert rejected["reason"] == "ndcg too low {{ conf }}", "a person's text is never run as a template"
    assert rejected["mlflow_url"] == "http://mlflow/#/x" and rejected["dag_run_id"] == "manual__run2"
    assert checks["webhook_from_connection"] is None  # RXREC_NOTIFY_CONN_ID unset


def test_a_connection_names_the_real_channel(checks_env, webhook):
    """RXREC_NOTIFY_CONN_ID: the webhook URL lives in an Airflow connection (here from the environment)."""
    env = {**checks_env, "RXREC_NOTIFY_CONN_ID": "rxrec_notify", "AIRFLOW_CONN_RXREC_NOTIFY": webhook["url"],
           "RXREC_NOTIFY_FILE": str(Path(checks_env["ROOT"]) / "with_channel.jsonl")}
    result = _run_checks(env)
    assert result["webhook_from_connection"] == webhook["url"]
    assert [b["rxrec"]["event"] for b in webhook["bodies"]] == ["run_failed", "gate_rejected", "approval_rejected",
                                                                  "approval_rejected"]
    assert webhook["bodies"][1]["text"].startswith("[rxrec] gate rejected in retrain_and_promote run manual__run2")
    assert len(result["lines"]) == 4, "the file keeps every event whatever the channel"


def test_a_rejection_is_notified_before_the_operator_skips_what_follows(checks):
    """ApprovalOperator skips promote_champion by raising: the notice must already be out by then."""
    person, timeout = checks["lines"][2:]
    assert person["event"] == timeout["event"] == "approval_rejected" and person["dag_run_id"] == "manual__run3"
    assert person["reason"] == "rejected by admin: not this week; champion and Triton unchanged"
    assert person["mlflow_url"] == "http://mlflow/#/gate" and person["details"]["comment"] == "not this week"
    assert timeout["reason"].startswith("no answer within 24 h (rejected by default)")
    assert all(outcome != "returned" for outcome in checks["resumed"].values()), "the notice came first anyway"


def test_approval_sits_between_the_gate_and_the_alias_move(checks):
    approval = checks["approval"]
    assert approval["class"] == "PromotionApproval" and approval["upstream"] == ["register"]
    assert approval["promote_upstream"] == ["approve_promotion"] and approval["deploy_upstream_has_promote"]
    assert approval["defaults"] == ["Reject"], "no answer in time is a rejection, never a promotion"
    assert approval["hitl_params"] == ["comment"]
    # With a person in the loop register decides without moving champion; off, as before.
    assert checks["overrides"] == {"auto": ["gate.promote=true"], "approval": ["gate.promote=false"],
                                   "dry": ["gate.promote=false"]}
    withheld = checks["withheld"]
    assert withheld["auto"] is None and withheld["approved"] is None
    assert withheld["off"].startswith("promote=false") and withheld["waiting"].startswith("require_approval")
    nothing = checks["nothing_to_approve"]
    assert nothing["asks"] is None and "require_approval is off" in nothing["off"]
    assert "register did not run in this run (skipped)" in nothing["skipped"]
    assert "the gate rejected v3: worse" in nothing["rejected"]
    assert checks["on_failure"] == ["RxrecNotifier"]


def test_every_task_page_links_to_its_mlflow_run(checks):
    assert checks["link_name"] == "MLflow run"
    assert checks["links"] and all(links == ["MlflowRunLink"] for links in checks["links"].values()), checks["links"]
    assert checks["plugin_links"] == ["MlflowRunLink"], "the rxrec plugin registers the link"
    # The API server shows the URL each task stored when it ended; it must never run get_link itself (its
    # process has no task SDK to read XCom with: the link page answered 500).
    assert all(links == {"MLflow run": "XComOperatorLink"} for links in checks["served_links"].values()), \
        checks["served_links"]
    assert checks["runs"] == checks["expected_runs"], "stage child run, else the DAG run's parent run"
    assert checks["unknown_run"] is None and checks["no_experiment"] is None
    assert checks["page"].startswith("http://ui:5000/#/experiments/") and checks["page"].endswith(
        f"/runs/{checks['expected_runs']['register']}")
    assert checks["ui"] == {"server": "http://mlflow:5000", "sqlite": "", "configured": "http://localhost:5000"}


LINK_DAG = r'''
import sys
from datetime import UTC, datetime

sys.path.insert(0, "{dags}")
from airflow.sdk import DAG, get_current_context
from rxrec_links import MLFLOW_URL_KEY, MlflowLinkedPythonOperator


def body():
    get_current_context()["ti"].xcom_push(key=MLFLOW_URL_KEY, value="http://mlflow.example/#/experiments/1/runs/abc")


with DAG("rxrec_link_check", start_date=datetime(2025, 1, 1, tzinfo=UTC), schedule=None) as dag:
    MlflowLinkedPythonOperator(task_id="stage", python_callable=body)
'''

LINK_SCRIPT = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.models.taskinstance import TaskInstance
from airflow.serialization.serialized_objects import DagSerialization
from airflow.utils.session import create_session
from sqlalchemy import select

dag = DagBag(dag_folder=sys.argv[1]).dags["rxrec_link_check"]
run = dag.test()
served = DagSerialization.from_dict(DagSerialization.to_dict(dag)).get_task("stage")  # as the API server has it
with create_session() as session:
    ti = session.scalar(select(TaskInstance).where(TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == run.run_id))
    print("RESULT=" + json.dumps({"state": str(run.state), "link": served.get_extra_links(ti, "MLflow run")}))
"""


def test_the_url_a_task_keeps_is_what_the_api_server_shows(checks_env, tmp_path):
    """The whole chain on a real (SQLite) Airflow: the task keeps its URL, the worker stores the link when the
    task ends, the API server's copy of the task (serialized, plugins loaded) reads it back."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "link_check.py").write_text(LINK_DAG.replace("{dags}", str(DAGS)))
    env = {**checks_env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, check=True,
                   timeout=240, cwd=tmp_path)
    done = subprocess.run([sys.executable, "-c", LINK_SCRIPT, str(dags)], env=env, capture_output=True, text=True,
                          timeout=240, cwd=tmp_path, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT=")).split("=", 1)[1])
    assert result == {"state": "success", "link": "http://mlflow.example/#/experiments/1/runs/abc"}
