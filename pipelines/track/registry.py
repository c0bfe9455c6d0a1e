"""MLflow tracking and the model registry: one run per training, aliases `challenger`/`champion`.

A new model version is registered as `challenger`; the gate moves `champion` to it only when
export parity held and it beats the current champion on the primary metric. Re-registering the
same model (same fingerprint: data version, params, ONNX bytes) reuses the existing version, so
re-runs do not pile up duplicate versions.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

CHAMPION = "champion"
CHALLENGER = "challenger"
PRIMARY_METRIC = "ndcg_at_10"


@dataclass
class RegistryResult:
    model_name: str
    version: str
    run_id: str
    experiment_id: str
    tracking_uri: str
    promoted: bool
    reason: str
    champion_version: str
    reused: bool

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))


def configure(tracking_uri: str, experiment: str, artifact_root: Path | None) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return mlflow.create_experiment(experiment, artifact_location=location)


def fingerprint(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def find_version(model_name: str, fp: str):
    """The registered version carrying this fingerprint, if any."""
    from mlflow import MlflowClient

    for version in MlflowClient().search_model_versions(f"name='{model_name}'"):
        if version.tags.get("fingerprint") == fp:
            return version
    return None


def champion_metric(model_name: str, metric: str = PRIMARY_METRIC) -> tuple[str, float] | None:
    """(version, metric) of the current champion, or None when there is none yet."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    value = client.get_run(version.run_id).data.metrics.get(metric)
    return str(version.version), float(value if value is not None else float("-inf"))


def gate(model_name: str, version: str, metrics: dict[str, float], parity_passed: bool) -> tuple[bool, str]:
    """Decide whether `version` becomes champion; returns (promote, reason)."""
    if not parity_passed:
        return False, "export parity failed: the ONNX model does not return the eager model's top-k"
    current = champion_metric(model_name)
    if current is None:
        return True, "no champion yet"
    champion_version, champion_value = current
    if champion_version == version:
        return True, "already champion"
    new_value = metrics[PRIMARY_METRIC]
    if new_value > champion_value:
        return True, f"{PRIMARY_METRIC} {new_value:.4f} beats champion v{champion_version} ({champion_value:.4f})"
    return False, f"{PRIMARY_METRIC} {new_value:.4f} does not beat champion v{champion_version} ({champion_value:.4f})"


def set_aliases(model_name: str, version: str, promote: bool) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    if promote:
        client.set_registered_model_alias(model_name, CHAMPION, version)
        try:
            if str(client.get_model_version_by_alias(model_name, CHALLENGER).version) == version:
                client.delete_registered_model_alias(model_name, CHALLENGER)
        except Exception:  # noqa: BLE001 - no challenger alias is fine
            pass
    else:
        client.set_registered_model_alias(model_name, CHALLENGER, version)


def log_training_run(
    *,
    tracking_uri: str,
    experiment: str,
    artifact_root: Path | None,
    model_name: str,
    params: dict,
    metrics: dict[str, float],
    baseline_metrics: dict[str, dict[str, float]],
    tags: dict[str, str],
    artifacts: dict[str, Path],
    onnx_path: Path,
    parity_passed: bool,
    fp: str,
) -> RegistryResult:
    """Log one run, register its ONNX model, and apply the gate to the aliases."""
    import mlflow
    import onnx

    experiment_id = configure(tracking_uri, experiment, artifact_root)
    existing = find_version(model_name, fp)
    if existing is not None:
        version_id = str(existing.version)
        promote, reason = gate(model_name, version_id, metrics, parity_passed)
        set_aliases(model_name, version_id, promote)
        champion = champion_metric(model_name)
        return RegistryResult(model_name, version_id, existing.run_id, experiment_id, tracking_uri,
                              promote, f"same model already registered; {reason}",
                              champion[0] if champion else "", reused=True)

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{model_name}-{fp[:8]}") as run:
        mlflow.set_tags({**tags, "fingerprint": fp})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(metrics)
        for baseline, values in baseline_metrics.items():
            mlflow.log_metrics({f"{baseline}.{k}": v for k, v in values.items()})
        for artifact_path, local in artifacts.items():
            if local.is_dir():
                mlflow.log_artifacts(str(local), artifact_path=artifact_path)
            elif local.exists():
                mlflow.log_artifact(str(local), artifact_path=artifact_path)
        info = mlflow.onnx.log_model(
            onnx_model=onnx.load(str(onnx_path)),
            name="model",
            pip_requirements=["onnxruntime", "numpy"],
            save_as_external_data=False,
        )
        version = mlflow.register_model(info.model_uri, model_name, tags={**tags, "fingerprint": fp,
                                                                          "run_id": run.info.run_id})
    version_id = str(version.version)
    promote, reason = gate(model_name, version_id, metrics, parity_passed)
    set_aliases(model_name, version_id, promote)
    from mlflow import MlflowClient

    MlflowClient().set_model_version_tag(model_name, version_id, "gate_decision", reason)
    champion = champion_metric(model_name)
    return RegistryResult(model_name, version_id, run.info.run_id, experiment_id, tracking_uri,
                          promote, reason, champion[0] if champion else "", reused=False)


def download_model(model_uri: str, dst: Path) -> Path:
    """Fetch a registered model's ONNX file (e.g. models:/gpt4rec@champion) to dst/model.onnx."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    found = sorted(local.rglob("*.onnx"))
    if not found:
        raise FileNotFoundError(f"no .onnx file in the artifacts of {model_uri}")
    return found[0]
