"""Each embedding method is a child run of the pipeline run, live while it trains: params, metrics, plots, the table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.core.config import Paths, Settings
from pipelines.track.live import TrainingRun


@contextmanager
def embedding_run(settings: Settings, paths: Paths, method: str, params: dict[str, Any]) -> Iterator[TrainingRun]:
    """The method's child run (named after it, tagged `method`), open while the block trains."""
    from pipelines.track.live import training_dataset, training_run

    with training_run(settings, paths, method, kind="embedding", params=params,
                      dataset=training_dataset(settings, paths)) as run:
        yield run


def log_embedding_results(run: TrainingRun, *, metrics: dict[str, float], table_dir: Path, plots: list[Path],
                          curves: dict[str, list[float]] | None = None) -> None:
    """Metrics, per-step curves reported at the end (e.g. fine-tuning losses), plots and the table itself."""
    for name, values in (curves or {}).items():
        run.log_curve(name, values)
    run.finish(metrics, {"embeddings": table_dir})
    for plot in plots:
        run.service.log_artifacts(run.run_id, {"plots": plot})
