"""retrain_and_promote: the dvc.yaml pipeline, run by Airflow.

The graph is written down once, in dvc.yaml. At parse time this file reads it and makes one task per
stage (task_id = stage name) with an edge A -> B whenever one of B's deps equals or lies under one of
A's outs/metrics/plots. Each task only calls ``pipelines.stages.run_stage``; what Airflow adds is the
run form (params -> ``section.key=value`` overrides of params.yaml), retries, the promotion gate and
the UI. Parse time stays cheap: yaml + pydantic; torch, mlflow etc. are imported inside the tasks.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import Param, dag, get_current_context, task

from pipelines.config import load_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DVC_YAML = PROJECT_ROOT / "dvc.yaml"

# Run-form field -> params.yaml key it overrides. Defaults and bounds come from the library's
# settings (params.yaml + pydantic), so the form can not drift from the one source of configuration.
FORM_FIELDS = {
    "n_products": ("data.n_products", "Catalogue size of the generated pharmacy world."),
    "n_users": ("data.n_users", "Number of users (each has one or more sessions)."),
    "gpt4rec_epochs": ("gpt4rec.epochs", "GPT4Rec training epochs."),
    "gpt4rec_max_len": ("gpt4rec.max_len", "GPT4Rec maximum sequence length (<= 512)."),
    "prod2vec_epochs": ("prod2vec.epochs", "Prod2Vec (word2vec over random walks) epochs."),
}
# Stages that only run when the run's `promote` param is true; everything downstream of them is
# skipped with them (default trigger rule).
PROMOTION_STAGES = frozenset({"deploy"})


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
    """Run params -> `section.key=value` strings for pipelines.config.load_settings."""
    out = [f"{dotted}={json.dumps(params[name])}" for name, (dotted, _) in FORM_FIELDS.items()
           if params.get(name) is not None]
    return out + list(params.get("extra_overrides") or [])


def _form() -> dict[str, Param]:
    settings = load_settings()
    form: dict[str, Param] = {}
    for name, (dotted, description) in FORM_FIELDS.items():
        section, key = dotted.split(".")
        model = getattr(settings, section)
        prop = type(model).model_json_schema()["properties"][key]
        schema = {k: prop[k] for k in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
                  if k in prop}
        form[name] = Param(getattr(model, key), description=f"{description} Overrides {dotted}.",
                           title=name.replace("_", " "), section="Training", **schema)
    form["promote"] = Param(
        True, type="boolean", title="promote", section="Promotion",
        description="Deploy the MLflow champion into the Triton model repository and check that Triton "
        "serves it (stages " + ", ".join(sorted(PROMOTION_STAGES)) + " and everything after them). "
        "Whether this run's model becomes champion is decided by the register stage's gate (beats the "
        "champion, export parity held). Off: train, evaluate, export and register only.",
    )
    form["extra_overrides"] = Param(
        [], type="array", items={"type": "string", "pattern": r"^[a-z0-9_]+\.[a-z0-9_]+=.*$"},
        title="extra overrides", section="Advanced",
        description="More params.yaml overrides, one `section.key=value` per line (e.g. gpt4rec.lr=0.001).",
    )
    return form


GRAPH = stage_graph(yaml.safe_load(DVC_YAML.read_text()))

DOC_MD = f"""
# retrain_and_promote

Runs the stages of `dvc.yaml` (the one place the pipeline graph is written down) through
`pipelines.stages.run_stage`, each as a task named after its stage. An edge A → B exists when one of B's
`deps` is (or lies under) one of A's `outs`/`metrics`/`plots`. The run form overrides `params.yaml`
for this run only; each task returns the stage's small summary (XCom).

Gates: `validate` fails the run on bad data and `export_onnx` on an ONNX/torch mismatch (nothing
downstream runs); `register` moves the MLflow `champion` alias only to a model that beats the
champion; `promote=false` skips {", ".join(f"`{s}`" for s in sorted(PROMOTION_STAGES))} (Triton) and
what follows it. Tasks retry twice with exponential backoff. Work directory: `RXREC_WORKDIR`
(default: the project root).

| stage | upstream |
|---|---|
{chr(10).join(f"| `{b}` | {', '.join(f'`{a}`' for a in ups) or '—'} |" for b, ups in GRAPH.items())}
"""


def _stage_task(stage: str):
    @task(task_id=stage, multiple_outputs=False,
          doc_md=f"Runs dvc.yaml stage `{stage}` via `pipelines.stages.run_stage`.")
    def run_one() -> dict:
        params = get_current_context()["params"]
        if stage in PROMOTION_STAGES and not params.get("promote"):
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("promote=false: not deploying to Triton in this run")
        from pipelines.stages import run_stage

        return run_stage(stage, overrides=overrides_from_params(params))

    return run_one()


@dag(
    dag_id="retrain_and_promote",
    dag_display_name="Retrain and promote (rxrec)",
    description="dvc.yaml stages: generate → validate → train → evaluate → export → register → deploy",
    schedule="@daily",
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["rxrec"],
    doc_md=DOC_MD,
    params=_form(),
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=15),
    },
)
def retrain_and_promote():
    tasks = {stage: _stage_task(stage) for stage in GRAPH}
    for stage, upstream in GRAPH.items():
        for name in upstream:
            tasks[name] >> tasks[stage]


retrain_and_promote_dag = retrain_and_promote()
