"""Training tracked while it happens: the run key that groups a pipeline run, and a training stage's child run.

Every stage of one pipeline run logs under one MLflow parent run, found by a run key: Airflow's dag run
id (AIRFLOW_CTX_DAG_RUN_ID, passed down to the stage commands), else RXREC_RUN_ID, else the enclosing
`dvc repro` process (its stages are child processes of it), else this process (`rxrec run` runs every
stage in one). The parent carries the key as a tag, so a retried task, another worker or the register
stage finds the same parent, and a stage's child run (one per model family or embedding method) is
found again by its name under that parent.

A training stage opens its child run when it starts: params and the dataset input first, then the
epochs' metrics (step = epoch) as they come, system metrics sampled in the background, and at the end
its final metrics, train_seconds and the validation curve. The register stage logs into the same
child runs afterwards (test metrics, the model files, the ONNX model).
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.core.config import Paths, Settings
    from pipelines.track.service import MlflowService

RUN_ID_ENV = "RXREC_RUN_ID"
STAGE_KIND_TAG = "rxrec.stage_kind"  # "model" or "embedding": which compare view a child run belongs to


def current_run_key() -> str:
    """The key of the pipeline run this process belongs to (see the module docstring for the order)."""
    for variable in ("AIRFLOW_CTX_DAG_RUN_ID", RUN_ID_ENV):
        if os.environ.get(variable):
            return os.environ[variable]
    import psutil

    process = psutil.Process()
    for ancestor in process.parents():
        try:
            command = ancestor.cmdline()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if any(Path(part).name == "dvc" for part in command[:3]) and "repro" in command:
            return f"dvc-repro-{ancestor.pid}-{int(ancestor.create_time())}"
    return f"local-{process.pid}-{int(process.create_time())}"


# --------------------------------------------------------------------------- the dataset a run trained on


@dataclass(frozen=True)
class DatasetRef:
    """An MLflow dataset input by reference: the data stays in DVC, MLflow records what and where."""

    name: str
    digest: str  # content hash (pipelines/track/lineage.content_hash)
    source: str  # where DVC keeps it: the remote's URL of that output (or of the remote, before a push)


def dvc_remote_url(root: Path) -> str:
    """The URL of the DVC remote in use: RXREC_DVC_REMOTE (a name), else .dvc/config's default remote.

    A relative local remote is resolved against the .dvc folder, as DVC does.
    """
    config = configparser.ConfigParser()
    config.read([root / ".dvc" / "config", root / ".dvc" / "config.local"])
    name = os.environ.get("RXREC_DVC_REMOTE") or config.get("core", "remote", fallback="")
    section = next((s for s in config.sections() if s.removeprefix("'").removesuffix("'") == f'remote "{name}"'),
                   None)
    if not name or section is None:
        return ""
    url = config.get(section, "url")
    if "://" in url or Path(url).is_absolute():
        return url
    return str((root / ".dvc" / url).resolve())


def dvc_remote_path(root: Path, out: str) -> str:
    """Where the remote keeps the version of `out` that dvc.lock records (DVC 3 layout), else the remote."""
    from pipelines.track.lineage import dvc_locked_hash

    url = dvc_remote_url(root)
    md5 = dvc_locked_hash(root, out)
    if not url:
        return str(root / out)
    return f"{url.rstrip('/')}/files/md5/{md5[:2]}/{md5[2:]}" if md5 else url


def training_dataset(s: Settings, p: Paths) -> DatasetRef:
    """data/features, what a training stage reads (its declared input; it may not open data/validated)."""
    from pipelines.track.lineage import content_hash

    rel = str(p.features.relative_to(p.root)) if p.features.is_relative_to(p.root) else str(p.features)
    return DatasetRef(s.data.dataset or s.data.source, content_hash(p.features), dvc_remote_path(p.root, rel))


# --------------------------------------------------------------------------- a training stage's child run


@dataclass
class TrainingRun:
    """A training stage's open child run: what the epoch loop and the stage log into it."""

    service: MlflowService
    run_id: str
    parent_id: str

    def log_epoch(self, row: dict[str, float]) -> None:
        """One epoch of the shared loop (FitContext.on_epoch): loss and validation metrics at step=epoch."""
        self.service.log_step_metrics(self.run_id, {k: v for k, v in row.items() if k != "epoch"},
                                      step=int(row["epoch"]))

    def log_curve(self, name: str, values: list[float]) -> None:
        """A per-epoch series a family reported only at the end (e.g. NCF's losses), at steps 1..n."""
        for epoch, value in enumerate(values, start=1):
            self.service.log_step_metrics(self.run_id, {name: value}, step=epoch)

    def finish(self, metrics: dict[str, Any], artifacts: dict[str, Path] | None = None) -> None:
        """Final metrics (numbers only) and files, e.g. the validation curve under plots/."""
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.service.log_values(self.run_id, metrics=numbers)
        if artifacts:
            self.service.log_artifacts(self.run_id, artifacts)

    @property
    def url(self) -> str:
        return self.service.run_url(self.run_id)


@contextmanager
def training_run(s: Settings, p: Paths, name: str, *, kind: str, params: dict[str, Any],
                 dataset: DatasetRef) -> Iterator[TrainingRun]:
    """The child run `name` of this pipeline run, live while the block trains (system metrics sampled).

    `kind` is "model" (named by the `model_family` tag, which register's runs use too) or "embedding"
    (named by the `method` tag).

    Params and the dataset input are logged when it opens, so the run shows what it trains on from
    the first epoch; a failure in the block ends the run FAILED.
    """
    from pipelines.track.lineage import git_commit
    from pipelines.track.service import FAMILY_TAG, METHOD_TAG, MlflowService

    service = MlflowService.from_settings(s, p)
    key = current_run_key()
    tags = {"git_commit": git_commit(p.root), "dataset": dataset.name, "airflow_dag_run_id":
            os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")}
    parent_id = service.pipeline_run(key, f"pipeline {key}", tags)
    run_id = service.child_run(parent_id, name, {**tags, STAGE_KIND_TAG: kind},
                               by=FAMILY_TAG if kind == "model" else METHOD_TAG)
    service.log_values(run_id, params=params)
    service.log_dataset(run_id, dataset)
    with service.live_run(run_id):
        yield TrainingRun(service, run_id, parent_id)
