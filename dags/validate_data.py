"""validate_data: ingest and validate the data; publishing the validated-data Asset triggers retraining.

The data-aware half of the retrain loop: `generate` (the generated world or an adapter over real data)
then `validate` (the Great Expectations gate), the same dvc.yaml stages through
``pipelines.stages.run_stage``. Only data that pass the gate produce an `rxrec_validated_data` asset
event (carrying the data's content hash and dataset name); `retrain_and_promote` is scheduled on it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

VALIDATED_DATA = Asset("rxrec_validated_data")  # same asset retrain_and_promote is scheduled on


def _overrides(params: dict) -> list[str]:
    import json

    out = [f"data.source={json.dumps(params['dataset'])}"] if params.get("dataset") else []
    return out + list(params.get("extra_overrides") or [])


@dag(
    dag_id="validate_data",
    dag_display_name="Validate data (rxrec)",
    description="generate/ingest → Great Expectations gate → rxrec_validated_data asset (triggers retraining)",
    schedule="@daily",
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["rxrec"],
    doc_md=__doc__,
    params={
        "dataset": Param("synthetic", type="string", enum=["synthetic", "s3rec", "tables"], title="dataset",
                         description="Overrides data.source: synthetic, s3rec or tables."),
        "extra_overrides": Param([], type="array", items={"type": "string", "pattern": r"^[a-z0-9_]+\.[a-z0-9_]+=.*$"},
                                 title="extra overrides", description="More `section.key=value` overrides."),
    },
)
def validate_data():
    @task(retries=0)
    def generate() -> dict:
        from pipelines.stages import run_stage

        return run_stage("generate", overrides=_overrides(get_current_context()["params"]))

    @task(retries=1, retry_delay=timedelta(seconds=30), outlets=[VALIDATED_DATA])
    def validate() -> dict:
        from pipelines.core.config import Paths
        from pipelines.stages import run_stage
        from pipelines.track.lineage import content_hash

        context = get_current_context()
        summary = run_stage("validate", overrides=_overrides(context["params"]))
        paths = Paths()
        context["outlet_events"][VALIDATED_DATA].extra = {
            "data_content_md5": content_hash(paths.validated), "path": str(paths.validated),
            "dataset": context["params"].get("dataset", "synthetic")}
        return summary

    generate() >> validate()


validate_data_dag = validate_data()
