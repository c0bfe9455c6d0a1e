"""retrain_and_promote: the dvc.yaml pipeline, run by Airflow.

The graph is written down once, in dvc.yaml. At parse time this file reads it and makes one task per
stage (task_id = stage name) with an edge A -> B whenever one of B's deps equals or lies under one of
A's outs/metrics/plots. Each task runs its stage THROUGH DVC (``dvc repro --single-item``) in a workspace
per DAG run (pipelines/stages/dvc_run.py), so a DAG run and `dvc repro` are the same thing; what Airflow
adds is the run form (params -> ``section.key=value`` overrides, written to the workspace's params.yaml),
retries, the promotion gate and the UI. Parse time stays cheap: yaml + pydantic; torch, mlflow etc. are
imported inside the tasks.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from pipelines.core.config import load_settings

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
    if "promote" in params:
        out.append(f"gate.promote={json.dumps(bool(params['promote']))}")
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


def _prepare_task():
    @task(task_id=PREPARE_TASK, retries=0,
          doc_md="Creates this run's DVC workspace (pipelines/stages/dvc_run.py): a git worktree of the code, "
                 "the previous run's dvc.lock and outputs from the shared DVC cache, and params.yaml with the "
                 "run form's overrides, which is what dvc.lock records.")
    def run_one() -> dict:
        from pipelines.stages.dvc_run import prepare

        return prepare(_workspace(), overrides_from_params(get_current_context()["params"]))

    return run_one()


def _stage_task(stage: str):
    retries = SERVICE_RETRIES if stage in SERVICE_STAGES else {"retries": 0}

    # none_failed: a family left out of the run is skipped without skipping evaluate; failures still stop
    # everything downstream (upstream_failed).
    @task(task_id=stage, multiple_outputs=False, trigger_rule="none_failed", **retries,
          doc_md=f"Runs dvc.yaml stage `{stage}` with `dvc repro --single-item {stage}` in the run's workspace: "
                 "skipped when its code, params and inputs did not change. Returns ran/restored/skipped, "
                 "its seconds and its JSON records.")
    def run_one() -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.stages.dvc_run import leave_out, repro

        params = get_current_context()["params"]
        if stage in PROMOTION_SKIPPED and not params.get("promote"):
            raise AirflowSkipException("promote=false: not deploying to Triton in this run")
        if stage in _left_out(params):
            leave_out(_workspace(), stage)  # no stale model on the leaderboard
            raise AirflowSkipException(f"model family {stage.removeprefix('train_')!r} is not selected in this run")
        return repro(_workspace(), stage, left_out=_left_out(params))

    return run_one()


def _record_task():
    @task(task_id=RECORD_TASK, trigger_rule="none_failed", **SERVICE_RETRIES,
          doc_md="Pushes the run's outputs to the DVC remote (RXREC_DVC_REMOTE, else .dvc/config's default), "
                 "commits its dvc.lock, params.yaml and metrics to `refs/rxrec/runs/<run id>` (compare two runs "
                 "with `dvc params diff` / `dvc metrics diff`) and returns which stages ran or were skipped, "
                 "with the seconds saved.")
    def run_one() -> dict:
        from pipelines.stages.dvc_run import record

        ti = get_current_context()["ti"]
        results = {stage: ti.xcom_pull(task_ids=stage) for stage in GRAPH}
        summary = record(_workspace(), {s: r for s, r in results.items() if isinstance(r, dict)})
        print(f"DVC: ran {summary['ran']}; skipped {summary['skipped']}; "
              f"{summary['seconds_saved_total']} s saved; lock committed to {summary['ref']}")
        return summary

    return run_one()


GPU_TASK = "build_tensorrt_engine"  # not a dvc.yaml stage: it needs a Kubernetes cluster with GPU nodes


def _build_tensorrt_engine_task():
    @task(task_id=GPU_TASK, **SERVICE_RETRIES,
          doc_md="Builds the champion's TensorRT engine on the GPU node pool (infra/k8s/tensorrt-build-job.yaml) "
                 "when params.yaml `gpu.enabled` is true; skipped otherwise.")
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

    return run_one()


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
)
def retrain_and_promote():
    prepare, tasks, record = _prepare_task(), {stage: _stage_task(stage) for stage in GRAPH}, _record_task()
    for stage, upstream in GRAPH.items():
        for name in upstream:
            tasks[name] >> tasks[stage]
        if not upstream:
            prepare >> tasks[stage]
        tasks[stage] >> record
    if "deploy" in tasks:
        tasks["deploy"] >> _build_tensorrt_engine_task()


retrain_and_promote_dag = retrain_and_promote()
