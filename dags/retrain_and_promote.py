"""retrain_and_promote: the dvc.yaml pipeline, run by Airflow.

The graph is written down once, in dvc.yaml. At parse time this file reads it and makes one task per
stage (task_id = stage name) with an edge A -> B whenever one of B's deps equals or lies under one of
A's outs/metrics/plots. Each task runs its stage THROUGH DVC (``dvc repro --single-item``) in a workspace
per DAG run (pipelines/stages/dvc_run.py), so a DAG run and `dvc repro` are the same thing; what Airflow
adds is the run form (params -> ``section.key=value`` overrides, written to the workspace's params.yaml),
retries, the promotion gate, an optional person's approval before promotion, notifications, a link from
every task to its MLflow run, and the UI. Parse time: yaml, pydantic and the model-family modules (they
type their own params sections, which the run form's defaults and bounds come from; they bring torch,
about 3 s on this machine, paid once: the forking components preload torch, pandas and mlflow through
infra/airflow/config/airflow_local_settings.py); dvc and the training code are imported inside the tasks.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, Param, dag, get_current_context
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from pipelines.core.config import load_settings

# The helper modules beside this file (rxrec_links, rxrec_notify): Airflow puts the DAGs folder on sys.path
# in its DAG processor and workers; a DagBag opened by hand (tests, `airflow dags test`) may not.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from rxrec_links import MLFLOW_URL_KEY, MlflowLinkedPythonOperator, MlflowRunLink, publish_mlflow_link
from rxrec_notify import RxrecNotifier

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DVC_YAML = PROJECT_ROOT / "dvc.yaml"

# Run-form field -> params.yaml key it overrides. Defaults and bounds come from the library's
# settings (params.yaml + pydantic), so the form can not drift from the one source of configuration.
FORM_FIELDS = {
    "dataset": ("data.source", ("Where the data come from: the generated pharmacy world (synthetic), S3Rec-style "
                                "interaction lines (s3rec, e.g. Amazon Beauty) or your CSV/Parquet tables (tables); "
                                "paths are params.yaml's data.* keys (override them under Advanced).")),
    "n_products": ("data.n_products", "Catalogue size of the generated pharmacy world."),
    "n_users": ("data.n_users", "Number of users (each has one or more sessions)."),
    "gpt4rec_epochs": ("gpt4rec.epochs", "GPT4Rec training epochs."),
    "gpt4rec_max_len": ("gpt4rec.max_len", "GPT4Rec maximum sequence length (<= 512)."),
    "prod2vec_epochs": ("prod2vec.epochs", "Prod2Vec (word2vec over random walks) epochs."),
    "gate_min_improvement": ("gate.min_improvement", ("Margin: the challenger must beat the champion's primary "
                                                      "metric (gate.primary_metric) by more than this.")),
    "gate_latency_budget_ms": ("gate.latency_budget_ms", ("p95 latency budget (ms) of the challenger served by "
                                                          "Triton; 0 skips the check.")),
    "gate_allow_time_budget_cut": ("gate.allow_time_budget_cut", ("Off: reject a challenger whose training its "
                                                                  "time budget (gpt4rec.time_budget_s) cut short.")),
}
# Guard metrics of the gate: form field -> key of gate.guard_tolerances (largest allowed drop vs the champion).
GUARD_FIELDS = {
    "gate_coverage_tolerance": ("coverage_at_10", "Largest allowed drop of catalogue coverage@10 vs the champion."),
    "gate_cold_start_tolerance": ("cold_start_hr_at_10", ("Largest allowed drop of cold-start HR@10 vs the "
                                                          "champion (skipped without cold-start targets).")),
}
# Tasks that talk to services (MLflow, Triton): retried with exponential backoff. Training stages are
# deterministic, so they fail fast instead. Two layers: inside the task every MLflow call retries per
# params.yaml `service_retries` (pipelines/core/retry.py: seconds, for a restart or a blip) and then fails
# naming the URL; these task retries cover a longer outage. A retried task is safe: a model version is
# found again by its fingerprint (no duplicate), a version the killed attempt left ungated is gated by the
# retry, and stage outputs are written atomically (tmp + rename).
SERVICE_STAGES = frozenset({"register", "deploy", "serve_check"})
SERVICE_RETRIES = {"retries": 3, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": 2.0,
                   "max_retry_delay": timedelta(minutes=10)}
# The validated-data Asset: produced by the validate_data DAG, it triggers this one (data-aware scheduling).
VALIDATED_DATA = Asset("rxrec_validated_data")
# Stages that only run when the run's `promote` param is true; everything downstream of them is
# skipped with them (default trigger rule).
PROMOTION_STAGES = frozenset({"deploy"})
PREPARE_TASK = "prepare_workspace"  # not dvc.yaml stages: they open and close the run's DVC workspace
RECORD_TASK = "record_run"
# A person in the loop (run form `require_approval`): register -> approve_promotion -> promote_champion -> deploy.
APPROVAL_TASK = "approve_promotion"
PROMOTE_TASK = "promote_champion"
REGISTRY_RECORD = "reports/pipeline/registry.json"  # register's record of its decision (XCom `records`)
# An unanswered approval is a rejection after this long (the next scheduled run may then start:
# max_active_runs is 1). RXREC_APPROVAL_TIMEOUT_HOURS per deployment.
APPROVAL_TIMEOUT = timedelta(hours=float(os.environ.get("RXREC_APPROVAL_TIMEOUT_HOURS", "24")))


def _paths(entries: list | None) -> list[str]:
    """dvc.yaml deps/outs entries are either `path` or `{path: {options}}`."""
    out: list[str] = []
    for entry in entries or []:
        out.extend(entry.keys() if isinstance(entry, dict) else [entry])
    return [str(p).rstrip("/") for p in out]


def stage_graph(dvc: dict) -> dict[str, list[str]]:
    """Map each stage of a parsed dvc.yaml to its upstream stages (both in dvc.yaml order)."""
    stages = dvc.get("stages") or {}
    templated = [n for n, spec in stages.items() if {"foreach", "matrix"} & set(spec)]
    if templated:
        raise ValueError(f"dvc.yaml stages {templated} use foreach/matrix, which the DAG does not expand")
    produced = {
        name: _paths(spec.get("outs")) + _paths(spec.get("metrics")) + _paths(spec.get("plots"))
        for name, spec in stages.items()
    }

    def feeds(out: str, dep: str) -> bool:
        return dep == out or dep.startswith(out + "/")

    return {
        b: [
            a
            for a in stages
            if a != b and any(feeds(o, d) for o in produced[a] for d in _paths(spec.get("deps")))
        ]
        for b, spec in stages.items()
    }


def overrides_from_params(params: dict[str, Any]) -> list[str]:
    """Run params -> `section.key=value` strings for pipelines.core.config.load_settings."""
    out = [f"{dotted}={json.dumps(params[name])}" for name, (dotted, _) in FORM_FIELDS.items()
           if params.get(name) is not None]
    guards = {metric: params[name] for name, (metric, _) in GUARD_FIELDS.items() if params.get(name) is not None}
    if guards:
        merged = {**load_settings().gate.guard_tolerances, **guards}
        out.append(f"gate.guard_tolerances={json.dumps(merged)}")
    if "promote" in params or params.get("require_approval"):
        # With a person in the loop the gate only decides (a dry run: champion untouched); promote_champion
        # applies its decision once that person approves.
        gate_moves = bool(params.get("promote", True)) and not params.get("require_approval")
        out.append(f"gate.promote={json.dumps(gate_moves)}")
    return out + list(params.get("extra_overrides") or [])


def families(graph: dict[str, list[str]]) -> list[str]:
    """Model families: the dvc.yaml stages named train_<family>."""
    return [stage.removeprefix("train_") for stage in graph if stage.startswith("train_")]


def descendants(graph: dict[str, list[str]], stage: str) -> set[str]:
    """Every stage downstream of `stage`."""
    out: set[str] = set()
    todo = [b for b, ups in graph.items() if stage in ups]
    while todo:
        b = todo.pop()
        if b not in out:
            out.add(b)
            todo.extend(c for c, ups in graph.items() if b in ups)
    return out


def _form() -> dict[str, Param]:
    settings = load_settings()
    form: dict[str, Param] = {}
    for name, (dotted, description) in FORM_FIELDS.items():
        section, key = dotted.split(".")
        model = getattr(settings, section)
        prop = type(model).model_json_schema()["properties"][key]
        schema = {k: prop[k] for k in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
                  if k in prop}
        if "enum" in prop:
            schema = {"type": "string", "enum": prop["enum"]}
        section_title = "Promotion gate" if section == "gate" else ("Data" if section == "data" else "Training")
        form[name] = Param(getattr(model, key), description=f"{description} Overrides {dotted}.",
                           title=name.replace("_", " "), section=section_title, **schema)
    for name, (metric, description) in GUARD_FIELDS.items():
        form[name] = Param(settings.gate.guard_tolerances.get(metric, 0.0), type="number", minimum=0,
                           title=name.replace("_", " "), section="Promotion gate",
                           description=f"{description} Overrides gate.guard_tolerances.{metric}.")
    all_families = families(GRAPH)
    form["model_families"] = Param(
        all_families, type="array", title="model families", section="Training",
        items={"type": "string", "enum": all_families}, uniqueItems=True, minItems=1,
        contains={"const": "gpt4rec"},
        description="Which model families to train and evaluate (one train_<family> stage each); gpt4rec is "
        "required (it is the registered model). Families left out are skipped and left off the leaderboard.",
        values_display={f: f for f in all_families},
    )
    form["promote"] = Param(
        True, type="boolean", title="promote", section="Promotion gate",
        description="On: a challenger that passes the gate (margin on the primary metric, guard metrics, "
        "export parity, Triton latency) becomes champion and is deployed to Triton (stages "
        + ", ".join(sorted(PROMOTION_STAGES)) + " and everything after them). Off: a dry run: train, evaluate, "
        "export, register as challenger and log the gate's decision, but move no alias and deploy nothing.",
    )
    form["require_approval"] = Param(
        False, type="boolean", title="require approval", section="Promotion gate",
        description="On: a challenger that passes the gate waits for a person before it becomes champion and is "
        f"deployed: `register` only decides (champion untouched), `{APPROVAL_TASK}` shows the gate's decision "
        "(both models on validation) under Required actions in the Airflow UI (or the REST API's hitlDetails); "
        f"Approve moves `champion` ({PROMOTE_TASK}) and deploys, Reject changes nothing in the registry or "
        f"Triton. No answer within {APPROVAL_TIMEOUT.total_seconds() / 3600:g} h is a rejection. Off: the gate "
        "promotes on its own. "
        "Needs promote on.",
    )
    form["extra_overrides"] = Param(
        [], type="array", items={"type": "string", "pattern": r"^[a-z0-9_]+\.[a-z0-9_]+=.*$"},
        title="extra overrides", section="Advanced",
        description="More params.yaml overrides, one `section.key=value` per line (e.g. gpt4rec.lr=0.001).",
    )
    return form


GRAPH = stage_graph(yaml.safe_load(DVC_YAML.read_text()))
PROMOTION_SKIPPED = set().union(*(({s} | descendants(GRAPH, s)) for s in PROMOTION_STAGES if s in GRAPH))


def schedule_from_env() -> Any:
    """Daily, or as soon as validate_data publishes new validated data, whichever comes first.

    RXREC_RETRAIN_SCHEDULE changes it per deployment: a cron expression (time only), `assets` (data-aware
    only) or `none` (manual runs only).
    """
    choice = os.environ.get("RXREC_RETRAIN_SCHEDULE", "").strip()
    if choice.lower() == "none":
        return None
    if choice.lower() == "assets":
        return [VALIDATED_DATA]
    if choice:
        return choice
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable("@daily", timezone="UTC"), assets=[VALIDATED_DATA])


DOC_MD = f"""
# retrain_and_promote

Runs the stages of `dvc.yaml` (the one place the pipeline graph is written down) through DVC, each as a
task named after its stage that runs `dvc repro --single-item <stage>`. An edge A → B exists when one of
B's `deps` is (or lies under) one of A's `outs`/`metrics`/`plots`. `{PREPARE_TASK}` creates the run's
workspace under `<work dir>/var/runs/<run id>` (a git worktree of the code, the previous run's `dvc.lock`
and outputs from the shared DVC cache, `params.yaml` with the run form's overrides), so a stage whose
code, params and inputs did not change is skipped; each task returns ran / restored / skipped, its
seconds and its JSON records (XCom). `{RECORD_TASK}` pushes the outputs to the DVC remote and commits the
run's `dvc.lock`, params and metrics to `refs/rxrec/runs/<run id>`: compare two runs with
`dvc params diff` / `dvc metrics diff` (docs/orchestration.md).

Gates: `validate` fails the run on bad data and `export_onnx` on an ONNX/torch mismatch (nothing
downstream runs); `register` logs a parent MLflow run with a child run per model family,
registers the new model as `challenger` and runs the promotion gate (margin on the primary metric, guard
metrics, export parity, Triton latency; its decision with both models' metrics is printed in the task log
and logged to MLflow); `promote=false` makes it a dry run and skips
{", ".join(f"`{s}`" for s in sorted(PROMOTION_STAGES))} (Triton) and what follows it. Tasks that talk to
services ({", ".join(f"`{s}`" for s in sorted(SERVICE_STAGES))}) retry with exponential backoff.

A person in the loop: with `require_approval` on, `register` only decides (a dry run: `champion` and
Triton untouched) and `{APPROVAL_TASK}` waits under **Required actions** with the gate's decision (both
models on the validation split); Approve → `{PROMOTE_TASK}` moves `champion` and `deploy` serves it;
Reject (or no answer within {APPROVAL_TIMEOUT.total_seconds() / 3600:g} h) changes nothing. Off, both tasks
are skipped and the gate promotes on its own.

Notifications (dags/rxrec_notify.py): a challenger the gate rejected, a person's rejection, an approval
to give and a failed run, as JSON lines in `var/notifications.jsonl` (`RXREC_NOTIFY_FILE`) and to
`RXREC_NOTIFY_WEBHOOK` / the connection `RXREC_NOTIFY_CONN_ID` when set. Every task page has an
**MLflow run** button (its stage's run, else the DAG run's parent run) and prints the URL in its log.
Scheduled daily and by the `rxrec_validated_data` asset (the `validate_data` DAG). Work directory
(MLflow store, Triton repository, run workspaces): `RXREC_WORKDIR` (default: the project root).

| stage | upstream |
|---|---|
{chr(10).join(f"| `{b}` | {', '.join(f'`{a}`' for a in ups) or '—'} |" for b, ups in GRAPH.items())}
"""



def _workspace():
    from pipelines.stages.dvc_run import RunWorkspace

    return RunWorkspace(run_id=get_current_context()["run_id"])


def _left_out(params: dict[str, Any]) -> list[str]:
    """The train_<family> stages this run's form leaves out."""
    chosen = params.get("model_families") or families(GRAPH)
    return [f"train_{family}" for family in families(GRAPH) if family not in chosen]


def promotion_withheld(params: dict[str, Any], approved: bool) -> str | None:
    """Why this run must not touch Triton (deploy and what follows), or None: promote off, or a person had
    to approve and did not (`approved`: promote_champion applied an approval in this run)."""
    if not params.get("promote"):
        return "promote=false: not deploying to Triton in this run"
    if params.get("require_approval") and not approved:
        return (f"require_approval: no promotion was approved in this run (see {APPROVAL_TASK}); the registry's "
                "champion and Triton stay as they are")
    return None


def nothing_to_approve(params: dict[str, Any], register_result: dict[str, Any] | None) -> str | None:
    """Why approve_promotion has no question for a person in this run, or None when it has one."""
    if not (params.get("promote") and params.get("require_approval")):
        return "require_approval is off (or promote is off): the gate decides alone, no person is asked"
    if not register_result or register_result.get("outcome") not in ("ran", "ran_outside_dvc"):
        outcome = (register_result or {}).get("outcome", "no result")
        return f"register did not run in this run ({outcome}): there is no new decision to approve"
    from pipelines.promotion.register import awaiting_approval

    registry = register_result.get("records", {}).get(REGISTRY_RECORD)
    return awaiting_approval(registry) if registry else f"register left no {REGISTRY_RECORD}"


def _run_stage_task(stage: str, params: dict[str, Any], context: Any) -> dict:
    from airflow.sdk.exceptions import AirflowSkipException

    from pipelines.stages.dvc_run import leave_out, repro

    if stage in PROMOTION_SKIPPED:
        withheld = promotion_withheld(params, approved=bool(context["ti"].xcom_pull(task_ids=PROMOTE_TASK)))
        if withheld:
            raise AirflowSkipException(withheld)
    if stage in _left_out(params):
        leave_out(_workspace(), stage)  # no stale model on the leaderboard
        raise AirflowSkipException(f"model family {stage.removeprefix('train_')!r} is not selected in this run")
    ws = _workspace()
    try:
        result = repro(ws, stage, left_out=_left_out(params))
    finally:
        mlflow_url = publish_mlflow_link(ws, stage, context["ti"])
    if stage == "register":
        _notify_gate_rejection(context, result, mlflow_url)
    return result


def _notify_gate_rejection(context: Any, result: dict, mlflow_url: str) -> None:
    """A challenger the gate rejected in this run is news for someone (a restored result was news before)."""
    registry = result.get("records", {}).get(REGISTRY_RECORD) or {}
    gate = registry.get("gate") or {}
    if result.get("outcome") in ("ran", "ran_outside_dvc") and gate and not gate.get("promote"):
        RxrecNotifier("gate_rejected", message=str(registry.get("reason", "")), mlflow_url=mlflow_url, details={
            "model": registry.get("model_name"), "version": registry.get("version"),
            "champion_version": registry.get("champion_version")})(context)


def _prepare_task():
    def run_one() -> dict:
        from pipelines.stages.dvc_run import prepare

        context = get_current_context()
        ws = _workspace()
        try:
            return prepare(ws, overrides_from_params(context["params"]))
        finally:
            publish_mlflow_link(ws, PREPARE_TASK, context["ti"])

    return MlflowLinkedPythonOperator(
        task_id=PREPARE_TASK, python_callable=run_one, retries=0,
        doc_md="Creates this run's DVC workspace (pipelines/stages/dvc_run.py): a git worktree of the code, "
               "the previous run's dvc.lock and outputs from the shared DVC cache, and params.yaml with the "
               "run form's overrides, which is what dvc.lock records. **MLflow run**: the DAG run's parent run.")


def _stage_task(stage: str):
    retries = SERVICE_RETRIES if stage in SERVICE_STAGES else {"retries": 0}

    def run_one() -> dict:
        context = get_current_context()
        return _run_stage_task(stage, context["params"], context)

    extra = ""
    if stage == "register":
        extra = (" Notifies when the gate rejects the challenger. With require_approval on it runs as a dry run "
                 f"(champion untouched) and `{APPROVAL_TASK}` asks a person.")
    elif stage in PROMOTION_SKIPPED:
        extra = " Skipped when promote is off, or when require_approval is on and no person approved."
    # none_failed: a family left out of the run is skipped without skipping evaluate; failures still stop
    # everything downstream (upstream_failed).
    return MlflowLinkedPythonOperator(
        task_id=stage, python_callable=run_one, trigger_rule="none_failed", **retries,
        doc_md=f"Runs dvc.yaml stage `{stage}` with `dvc repro --single-item {stage}` in the run's workspace: "
               "skipped when its code, params and inputs did not change. Returns ran/restored/skipped, its "
               "seconds and its JSON records. **MLflow run**: the stage's own run (a model family's or "
               f"embedding method's child run), else the DAG run's parent run.{extra}")


class PromotionApproval(ApprovalOperator):
    """Asks a person whether the challenger the gate passed may become champion (Airflow's HITL approval).

    Skipped, asking nobody, when require_approval is off or there is nothing to approve (the gate rejected,
    register changed nothing). Otherwise the body is the gate's decision from registry.json; the task waits
    (state awaiting_input, no worker slot held) for Approve or Reject in the UI or through the REST API.
    Reject (or the timeout's default) skips promote_champion, so deploy finds nothing approved: the
    registry and Triton stay as they were, and the rejection is notified.
    """

    operator_extra_links = (MlflowRunLink(),)

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.promotion.register import approval_request

        ti = context["ti"]
        mlflow_url = publish_mlflow_link(_workspace(), self.task_id, ti)
        register_result = ti.xcom_pull(task_ids="register")
        why_not = nothing_to_approve(context["params"], register_result)
        if why_not:
            raise AirflowSkipException(why_not)
        self.subject, self.body = approval_request(register_result["records"][REGISTRY_RECORD])
        if mlflow_url:
            self.body += f"\n\nThe gate's run in MLflow: {mlflow_url}"
        try:
            where = self.generate_link_to_ui_from_context(context=context)
        except ValueError:  # no [api] base_url: the notice names the task instead
            where = f"the Required actions of task {self.task_id}, run {context['run_id']}"
        self.notifiers = [RxrecNotifier("approval_requested", message=f"{self.subject} Answer at {where}",
                                        mlflow_url=mlflow_url, details={"required_action": where})]
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        # Notified first: on Reject, ApprovalOperator skips the downstream tasks by raising (Airflow 3), so no
        # code runs after it.
        if "error" not in event and list(event.get("chosen_options") or []) == [self.REJECT]:
            self._notify_rejection(context, event)
        return super().execute_complete(context=context, event=event)

    def _notify_rejection(self, context: Any, event: dict[str, Any]) -> None:
        user = (event.get("responded_by_user") or {}).get("name")
        comment = (event.get("params_input") or {}).get("comment") or ""
        who = f"rejected by {user}" if user else (
            f"no answer within {APPROVAL_TIMEOUT.total_seconds() / 3600:g} h (rejected by default)")
        RxrecNotifier("approval_rejected", message=who + (f": {comment}" if comment else "") +
                      "; champion and Triton unchanged", details={"responded_by": user, "comment": comment},
                      mlflow_url=context["ti"].xcom_pull(task_ids=self.task_id, key=MLFLOW_URL_KEY) or "")(context)


def _approval_task() -> PromotionApproval:
    return PromotionApproval(
        task_id=APPROVAL_TASK, retries=0, subject="Make the challenger the champion?",
        defaults="Reject", response_timeout=APPROVAL_TIMEOUT,
        params={"comment": Param("", type="string", title="comment",
                                 description="Why (kept with the champion move, or in the rejection notice).")},
        doc_md="Human-in-the-loop approval (run form `require_approval`): shows the gate's decision (checks, "
               "both models on the validation split) and waits under Required actions; Approve → "
               f"`{PROMOTE_TASK}` + `deploy`, Reject → nothing changes and the rejection is notified. Skipped "
               "when approval is off or the gate had nothing to approve. Answer through the REST API: PATCH "
               f"/api/v2/dags/retrain_and_promote/dagRuns/<run id>/taskInstances/{APPROVAL_TASK}/-1/hitlDetails "
               "with chosen_options [\"Approve\"] or [\"Reject\"]. **MLflow run**: the DAG run's parent run "
               "(the gate's decision).")


def _promote_champion_task():
    def run_one() -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines.core.config import Paths
        from pipelines.promotion.register import ApprovalError
        from pipelines.stages.promote import approve_challenger

        context = get_current_context()
        ti = context["ti"]
        answer = ti.xcom_pull(task_ids=APPROVAL_TASK) or {}
        if answer.get("chosen_options") != [ApprovalOperator.APPROVE]:
            raise AirflowSkipException(f"{APPROVAL_TASK} did not approve a promotion in this run")
        user = (answer.get("responded_by_user") or {}).get("name") or "unknown user"
        comment = (answer.get("params_input") or {}).get("comment") or ""
        ws = _workspace()
        # The run's stores, as its stages saw them (the workspace's params, the state's MLflow store).
        os.environ["RXREC_MLFLOW_TRACKING_URI"] = ws.env()["RXREC_MLFLOW_TRACKING_URI"]
        try:
            result = approve_challenger(load_settings(params_file=ws.path / "params.yaml"), Paths(ws.path),
                                        f"{user} (Airflow)", comment)
        except ApprovalError as exc:
            raise AirflowFailException(str(exc)) from exc  # stale or empty: retrying cannot fix it
        finally:
            publish_mlflow_link(ws, PROMOTE_TASK, ti)
        print(f"PROMOTION: {result['reason']}")
        return result

    return MlflowLinkedPythonOperator(
        task_id=PROMOTE_TASK, python_callable=run_one, **SERVICE_RETRIES,
        doc_md="After a person approved: moves the registry's `champion` to the challenger the gate passed "
               "(pipelines/stages/promote.py approve_challenger; recorded as a version tag, in the champion "
               "moves and on the parent MLflow run), then `deploy` serves it. Fails without retrying when the "
               "champion moved since the gate compared (stale decision: trigger the DAG again).")


def _record_task():
    def run_one() -> dict:
        from pipelines.stages.dvc_run import record

        context = get_current_context()
        ti = context["ti"]
        ws = _workspace()
        results = {stage: ti.xcom_pull(task_ids=stage) for stage in GRAPH}
        try:
            summary = record(ws, {s: r for s, r in results.items() if isinstance(r, dict)})
        finally:
            publish_mlflow_link(ws, RECORD_TASK, ti)
        print(f"DVC: ran {summary['ran']}; skipped {summary['skipped']}; "
              f"{summary['seconds_saved_total']} s saved; lock committed to {summary['ref']}")
        return summary

    return MlflowLinkedPythonOperator(
        task_id=RECORD_TASK, python_callable=run_one, trigger_rule="none_failed", **SERVICE_RETRIES,
        doc_md="Pushes the run's outputs to the DVC remote (RXREC_DVC_REMOTE, else .dvc/config's default), "
               "commits its dvc.lock, params.yaml and metrics to `refs/rxrec/runs/<run id>` (compare two runs "
               "with `dvc params diff` / `dvc metrics diff`) and returns which stages ran or were skipped, "
               "with the seconds saved. **MLflow run**: the DAG run's parent run.")


GPU_TASK = "build_tensorrt_engine"  # not a dvc.yaml stage: it needs a Kubernetes cluster with GPU nodes


def _build_tensorrt_engine_task():
    def run_one() -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        params = get_current_context()["params"]
        if not params.get("promote"):
            raise AirflowSkipException("promote=false: nothing was deployed, so there is no engine to build")
        settings = load_settings(overrides=overrides_from_params(params))
        if not settings.gpu.enabled:
            raise AirflowSkipException("the GPU profile is disabled: set `gpu.enabled: true` in params.yaml (or add "
                                       "`gpu.enabled=true` under extra overrides) with a kube context that reaches "
                                       "the GPU node pool to build the TensorRT engine")
        from pipelines.core.config import Paths
        from pipelines.gpu.deploy import ClusterUnavailable, build_tensorrt_engine

        try:
            return build_tensorrt_engine(settings, Paths())
        except ClusterUnavailable as exc:
            raise AirflowFailException(str(exc)) from exc  # retrying cannot conjure a cluster

    return MlflowLinkedPythonOperator(
        task_id=GPU_TASK, python_callable=run_one, **SERVICE_RETRIES,
        doc_md="Builds the champion's TensorRT engine on the GPU node pool (infra/k8s/tensorrt-build-job.yaml) "
               "when params.yaml `gpu.enabled` is true; skipped otherwise.")


@dag(
    dag_id="retrain_and_promote",
    dag_display_name="Retrain and promote (rxrec)",
    description="dvc.yaml stages: generate → validate → train → evaluate → export → register → deploy",
    schedule=schedule_from_env(),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["rxrec"],
    doc_md=DOC_MD,
    params=_form(),
    on_failure_callback=RxrecNotifier("run_failed"),
)
def retrain_and_promote():
    prepare, tasks, record = _prepare_task(), {stage: _stage_task(stage) for stage in GRAPH}, _record_task()
    for stage, upstream in GRAPH.items():
        for name in upstream:
            tasks[name] >> tasks[stage]
        if not upstream:
            prepare >> tasks[stage]
        tasks[stage] >> record
    if "register" in tasks and "deploy" in tasks:
        tasks["register"] >> _approval_task() >> _promote_champion_task() >> tasks["deploy"]
    if "deploy" in tasks:
        tasks["deploy"] >> _build_tensorrt_engine_task()


retrain_and_promote_dag = retrain_and_promote()
