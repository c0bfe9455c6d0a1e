"""Each embedding method is its own MLflow run: params, metrics, plots and the table itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

EXPERIMENT_SUFFIX = "-embeddings"


def log_embedding_run(
    *, tracking_uri: str, experiment: str, artifact_root: Path, method: str, params: dict[str, Any],
    metrics: dict[str, float], table_dir: Path, plots: list[Path], tags: dict[str, str] | None = None,
) -> str:
    """One run named after the method in `<experiment>-embeddings`; returns its run id."""
    import mlflow
    from pipelines.track.registry import configure

    experiment_id = configure(tracking_uri, experiment + EXPERIMENT_SUFFIX, artifact_root)
    with mlflow.start_run(experiment_id=experiment_id, run_name=method) as run:
        mlflow.set_tags({"method": method, "airflow_dag_run_id": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", ""),
                         **(tags or {})})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        for plot in plots:
            mlflow.log_artifact(str(plot), artifact_path="plots")
        mlflow.log_artifacts(str(table_dir), artifact_path="embeddings")
        return run.info.run_id
