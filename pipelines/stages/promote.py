"""Export, registry and gate, deployment to the Triton repository, and the served-model check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.config import Paths, Settings
from pipelines.core.files import fresh_dir, published_dir, write_json_atomic

if TYPE_CHECKING:
    from pipelines.track.service import MlflowService


def export_onnx(s: Settings, p: Paths) -> dict[str, Any]:
    from pipelines.data.sequences import load_sequences
    from pipelines.export.onnx import export_and_check
    from pipelines.models.gpt4rec import GPT4Rec

    model = GPT4Rec.load(p.models / "gpt4rec")
    histories, _, _ = load_sequences(p.features).evaluation("test")
    out = p.onnx / "gpt4rec"
    # Written beside the output and renamed into place: a killed export leaves the previous model whole.
    with published_dir(out) as staging:
        report = export_and_check(model, staging, histories[: s.export.parity_sessions],
                                  k=s.export.top_k, opset=s.export.opset, mask_seen=s.evaluate.mask_seen)
    report.onnx_file = str(out / Path(report.onnx_file).name)
    report.save(p.reports / "parity.json")
    if not report.passed:
        raise RuntimeError(
            f"ONNX parity failed: {report.mismatched_sessions} of {report.sessions} sessions get a different "
            f"top-{report.top_k} from ONNX Runtime than from torch (see {p.reports / 'parity.json'})"
        )
    return {"passed": report.passed, "sessions": report.sessions, "max_abs_score_diff": report.max_abs_score_diff}


def register(s: Settings, p: Paths) -> dict[str, Any]:
    """MLflow runs (parent + a child per model), the ONNX model as `challenger`, then the promotion gate.

    The gate scores champion and challenger on the validation split (the test split is read once, after
    the decision, for the report only: pipelines/promotion/splits.py), checks guard metrics, export parity
    and Triton latency, and moves `champion` only when all pass and `gate.promote` is on. The same
    model registered again (same fingerprint) changes nothing; a version left without a gate decision
    by a killed attempt is reused and the gate finishes. A corrupt or incompatible ONNX file is
    rejected before anything is registered. Registry calls retry per `service_retries`.
    """
    from pipelines.promotion.register import register as register_and_gate

    return register_and_gate(s, p)



def approve_challenger(s: Settings, p: Paths, approved_by: str, comment: str = "") -> dict[str, Any]:
    """A person approved the decision this work directory's `register` recorded (registry.json): `champion`
    moves to its challenger, and `deploy` serves it next.

    The DAG's approval step (run form `require_approval`): `register` then runs as a dry run, so the
    champion alias and Triton stay untouched until a person says yes. Not a dvc.yaml stage: a person's
    answer is not a computation DVC could reproduce. Refused, changing nothing, when the gate rejected the
    challenger or `champion` moved since the gate compared (pipelines/promotion/register.py `approve`).
    """
    from pipelines.core.files import read_json
    from pipelines.promotion.register import approve
    from pipelines.track.service import MlflowService

    registry = read_json(p.reports / "registry.json")
    return approve(MlflowService.from_settings(s, p), registry, approved_by, comment)


def deploy(s: Settings, p: Paths) -> dict[str, Any]:
    """Make the registry's current `champion` the newest version folder of the Triton model repository.

    Nothing is written when the newest folder already holds that model version; after a rollback the
    older champion is written again as a new folder (Triton serves the newest). similar_items and
    recommend follow (pipelines/repository/companions.py: a new folder only when their files changed).
    The profile's Triton (pipelines/serve/endpoint.py: RXREC_TRITON_URL, else serve.http_port on 127.0.0.1)
    loads what changed in dependency order (gpt4rec, similar_items, recommend), so it swaps versions
    without a restart.
    """
    from pipelines.repository.metadata import read_model_metadata
    from pipelines.repository.versions import list_versions, write_model_config, write_version
    from pipelines.track.service import CHAMPION, MlflowService

    name, uri = s.mlflow.registered_model, p.tracking_uri(s)
    registry = MlflowService.from_settings(s, p)
    champion = registry.alias_version(name, CHAMPION)
    if champion is None:
        raise RuntimeError(f"model {name!r} in {uri} has no {CHAMPION!r} alias: nothing to deploy")
    version_id = str(champion.version)
    users = _champion_users(registry, champion.run_id, p)
    repo = p.triton_repo
    model_dir = repo / s.serve.model_name
    versions = list_versions(repo, s.serve.model_name)
    if versions:
        lineage_file = model_dir / str(versions[-1]) / "lineage.json"
        served = json.loads(lineage_file.read_text()).get("metadata", {}) if lineage_file.exists() else {}
        if served.get("registered_model") == name and str(served.get("model_version")) == version_id \
                and served.get("tracking_uri") == uri:
            return _finish_deploy(s, p, {"version_path": str(model_dir / str(versions[-1])),
                                         "triton_version": versions[-1], "model_version": version_id, "new": False},
                                  users)
    staging = fresh_dir(p.var / "deploy" / "download")
    onnx_path = registry.download_model(f"models:/{name}/{version_id}", staging)
    write_model_config(repo, s.serve.model_name, read_model_metadata(onnx_path), max_batch_size=s.serve.max_batch_size,
                       instance_count=s.serve.instance_count)
    path = write_version(repo, s.serve.model_name, onnx_path, metadata={  # the alias lookup gave the whole version
        "registered_model": name, "model_version": version_id, "alias": CHAMPION,
        "run_id": champion.run_id, "tracking_uri": uri, **champion.tags,
    })
    return _finish_deploy(s, p, {"version_path": str(path), "triton_version": int(path.name),
                                 "model_version": version_id, "new": True}, users)


def _champion_users(registry: MlflowService, run_id: str | None, p: Paths) -> Path | None:
    """The champion's stored user vectors (user_vectors/users.npz of its run), None for a model without them."""
    from pipelines.models.user_vectors import USERS_ARTIFACT, USERS_FILE

    if not run_id:
        return None
    return registry.download_run_file(run_id, f"{USERS_ARTIFACT}/{USERS_FILE}", fresh_dir(p.var / "deploy" / "users"))


def _finish_deploy(s: Settings, p: Paths, summary: dict[str, Any], users: Path | None) -> dict[str, Any]:
    """Write similar_items and recommend beside gpt4rec, have the profile's Triton load what changed, report."""
    from pipelines.repository.companions import deploy_companions
    from pipelines.serve.remote import load_deployed

    models: dict[str, dict[str, Any]] = {s.serve.model_name: {
        "version_path": summary["version_path"], "triton_version": summary["triton_version"], "new": summary["new"]}}
    models |= deploy_companions(s, p, p.triton_repo, Path(summary["version_path"]), users)
    summary |= {"models": models, **load_deployed(s, models)}
    write_json_atomic(p.reports / "deploy.json", summary)
    return summary


def serve_check(s: Settings, p: Paths) -> dict[str, Any]:
    """Start the real Triton, load the deployed model, ask it for 3 sessions, compare with ONNX Runtime."""
    from pipelines.serve.check import check_served_model

    summary = check_served_model(s, p)
    write_json_atomic(p.reports / "serve_check.json", summary)
    return summary
