"""Export, registry and gate, deployment to the Triton repository, and the served-model check."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pipelines.core.config import Paths, Settings
from pipelines.core.files import fresh_dir, published_dir, read_json, write_json_atomic
from pipelines.data.sequences import META_FILE


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


def _dataset_name(p: Paths) -> str:
    """The dataset the validated tables came from (source.json), for the MLflow lineage tag."""
    source = p.validated / "source.json"
    return str(json.loads(source.read_text()).get("dataset", "")) if source.exists() else "synthetic"


# Model families and the params.yaml sections logged with each one's MLflow child run.
FAMILY_SECTIONS: dict[str, tuple[str, ...]] = {"gpt4rec": ("gpt4rec", "prod2vec", "graph", "export")}


def register(s: Settings, p: Paths) -> dict[str, Any]:
    """MLflow runs (parent + a child per model), the ONNX model as `challenger`, then the promotion gate.

    The gate scores champion and challenger on the same split, checks guard metrics, export parity
    and Triton latency, and moves `champion` only when all pass and `gate.promote` is on. The same
    model registered again (same fingerprint) changes nothing; a version left without a gate decision
    by a killed attempt is reused and the gate finishes. A corrupt or incompatible ONNX file is
    rejected before anything is registered. Registry calls retry per `service_retries`.
    """
    from pipelines.core.retry import RetryPolicy
    from pipelines.promotion.gate import (
        GateReport,
        IncompatibleModel,
        artifact_checks,
        decide,
        onnx_metrics,
        reason_of,
        triton_latency,
    )
    from pipelines.track import lineage, registry

    metrics_all = read_json(p.reports / "metrics.json")["models"]
    parity = read_json(p.reports / "parity.json")
    onnx_path = p.onnx / "gpt4rec" / "model.onnx"
    data = lineage.data_version(p.root, p.validated)
    dag_run_id = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    tags = {
        "git_commit": lineage.git_commit(p.root),
        "data_dvc_md5": data["dvc_md5"] or "",
        "data_content_md5": data["content_md5"],
        "data_raw_dvc_md5": lineage.dvc_locked_hash(p.root, "data/raw") or "",
        "data_raw_content_md5": lineage.content_hash(p.raw) if p.raw.exists() else "",
        "dataset": _dataset_name(p),
        "airflow_dag_run_id": dag_run_id,
    }
    params = s.flat()
    name, uri = s.mlflow.registered_model, p.tracking_uri(s)
    fp = registry.fingerprint(data["content_md5"], registry.model_params(params))
    experiment_id = registry.configure(uri, s.mlflow.experiment, p.mlflow_artifacts,
                                       RetryPolicy.from_settings(s.service_retries))

    existing = registry.find_version(name, fp)
    if existing is not None and existing.tags.get(registry.GATE_TAG):
        # same data version, same params, gate already decided: the registry already has this model
        champion = registry.alias_version(name, registry.CHAMPION)
        reason = (f"no-op: this model (data {data['content_md5'][:8]}, fingerprint {fp[:8]}) is already "
                  f"registered as v{existing.version}; aliases unchanged")
        print(f"REGISTRY: {reason}")
        result = registry.RegistryResult(name, str(existing.version), existing.run_id, experiment_id, uri,
                                         promoted=False, reason=reason, reused=True,
                                         champion_version=str(champion.version) if champion else "")
        result.save(p.reports / "registry.json")
        return json.loads((p.reports / "registry.json").read_text())

    # The artifact itself, before anything is registered: a corrupt or incompatible file is rejected here.
    checks = artifact_checks(onnx_path, int(read_json(p.features / META_FILE)["n_items"]))
    if not all(c.passed for c in checks):
        champion = registry.alias_version(name, registry.CHAMPION)
        champion_version = str(champion.version) if champion is not None else None
        reason = reason_of(False, checks, champion_version)
        report = GateReport("", champion_version, False, False, reason, checks,
                            compared_on="the challenger artifact alone (not registered)")
        report.save(p.reports / "gate.json")
        print(report.table())
        result = registry.RegistryResult(name, "", "", experiment_id, uri, promoted=False, reason=reason,
                                         champion_version=champion_version or "", reused=False,
                                         gate=report.to_dict())
        result.save(p.reports / "registry.json")
        return json.loads((p.reports / "registry.json").read_text())

    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent_id = registry.pipeline_run(experiment_id, dag_run_id, f"retrain {dag_run_id or 'local ' + stamp}", tags)
    registry.log_values(parent_id, params=params, tags={"fingerprint": fp})
    registry.log_artifacts(parent_id, {"reports": p.reports / "metrics.json", "plots": p.reports / "metrics.png",
                                       "reports/validation": p.reports / "validation.md",
                                       "reports/parity": p.reports / "parity.json"})
    children: dict[str, str] = {}
    for family, metrics in metrics_all.items():
        run_id = registry.child_run(experiment_id, parent_id, family, tags)
        sections = ("data", "evaluate", *FAMILY_SECTIONS.get(family, (family,)))
        registry.log_values(run_id, params={k: v for k, v in params.items() if k.split(".", 1)[0] in sections},
                            metrics={k: v for k, v in metrics.items() if k != "n_users"})
        if (p.models / family).is_dir():
            registry.log_artifacts(run_id, {"model": p.models / family})
        children[family] = run_id

    run_id = children["gpt4rec"]
    registry.log_artifacts(run_id, {"embeddings/prod2vec": p.embeddings / "prod2vec" / "meta.json"})
    version = registry.log_onnx_model(run_id, onnx_path, name, {**tags, "fingerprint": fp, "parent_run_id": parent_id})
    registry.mark_challenger(name, version)

    # The gate: both exported models scored on the current test split by the same code.
    k = s.evaluate.k
    challenger_metrics = onnx_metrics(onnx_path, p.features, k)
    champion = registry.alias_version(name, registry.CHAMPION)
    champion_metrics: dict[str, float] | None = None
    compared_on = f"test split of data {data['content_md5'][:8]} (ONNX Runtime, both models)"
    resumed = champion is not None and str(champion.version) == version
    if resumed:  # an interrupted attempt already promoted this version: compare with the one it replaced
        past = [v for v in registry.history(name) if v != version]
        champion = registry.get_version(name, past[-1]) if past else None
    if champion is not None:
        try:
            staged = registry.download_model(f"models:/{name}/{champion.version}", fresh_dir(p.var / "gate" / "champion"))
            champion_metrics = onnx_metrics(staged, p.features, k)
        except IncompatibleModel as exc:
            champion_metrics = registry.run_metrics(champion.run_id)
            compared_on = f"champion's logged metrics on its own data ({exc})"
    latency = triton_latency(onnx_path, s, p, s.gate.latency_requests) if s.gate.latency_budget_ms > 0 else None
    verdict, checks = decide(s.gate, challenger_metrics, champion_metrics, parity_passed=bool(parity["passed"]),
                             latency=latency)
    champion_version = str(champion.version) if champion is not None else None
    applied = verdict and s.gate.promote
    reason = reason_of(verdict, checks, champion_version)
    if verdict and not applied:
        reason = f"dry run (gate.promote=false), would be {reason}"
    if resumed and not applied:
        reason += f" (note: an interrupted attempt had already made v{version} champion; it stays)"
    if applied:
        registry.promote(name, version)
    report = GateReport(version, champion_version, verdict, applied, reason, checks, challenger_metrics,
                        champion_metrics or {}, compared_on, latency or {})
    report.save(p.reports / "gate.json")
    print(report.table())

    registry.tag_version(name, version, registry.GATE_TAG, reason)
    gate_metrics = {f"gate.challenger.{m}": v for m, v in challenger_metrics.items()}
    gate_metrics |= {f"gate.champion.{m}": v for m, v in (champion_metrics or {}).items()}
    gate_metrics |= {f"gate.latency_{m}": v for m, v in (latency or {}).items()}
    registry.log_values(parent_id, metrics=gate_metrics, tags={
        "gate.decision": "promote" if applied else ("dry-run" if verdict else "reject"), "gate.reason": reason,
        "gate.challenger_version": version, "gate.champion_version": champion_version or ""})
    registry.log_artifacts(parent_id, {"gate": p.reports / "gate.json"})
    now = registry.alias_version(name, registry.CHAMPION)
    result = registry.RegistryResult(name, version, run_id, experiment_id, uri, promoted=applied, reason=reason,
                                     champion_version=str(now.version) if now else "", reused=False,
                                     parent_run_id=parent_id, child_run_ids=children, gate=report.to_dict())
    result.save(p.reports / "registry.json")
    return json.loads((p.reports / "registry.json").read_text())


def deploy(s: Settings, p: Paths) -> dict[str, Any]:
    """Make the registry's current `champion` the newest version folder of the Triton model repository.

    Nothing is written when the newest folder already holds that model version; after a rollback the
    older champion is written again as a new folder (Triton serves the newest). similar_items and
    recommend follow (pipelines/repository/companions.py: a new folder only when their files changed).
    A Triton already listening on serve.http_port loads what changed in dependency order (gpt4rec,
    similar_items, recommend), so it swaps versions without a restart.
    """
    import onnx

    from pipelines.core.retry import RetryPolicy
    from pipelines.repository.versions import list_versions, write_config, write_version
    from pipelines.track.registry import CHAMPION, alias_version, configure, download_model

    name, uri = s.mlflow.registered_model, p.tracking_uri(s)
    configure(uri, s.mlflow.experiment, p.mlflow_artifacts, RetryPolicy.from_settings(s.service_retries))
    champion = alias_version(name, CHAMPION)
    if champion is None:
        raise RuntimeError(f"model {name!r} in {uri} has no {CHAMPION!r} alias: nothing to deploy")
    version_id = str(champion.version)
    repo = p.triton_repo
    model_dir = repo / s.serve.model_name
    versions = list_versions(repo, s.serve.model_name)
    if versions:
        lineage_file = model_dir / str(versions[-1]) / "lineage.json"
        served = json.loads(lineage_file.read_text()).get("metadata", {}) if lineage_file.exists() else {}
        if served.get("registered_model") == name and str(served.get("model_version")) == version_id \
                and served.get("tracking_uri") == uri:
            return _finish_deploy(s, p, {"version_path": str(model_dir / str(versions[-1])),
                                         "triton_version": versions[-1], "model_version": version_id, "new": False})
    staging = fresh_dir(p.var / "deploy" / "download")
    onnx_path = download_model(f"models:/{name}/{version_id}", staging)
    meta = {e.key: e.value for e in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    write_config(repo, s.serve.model_name, max_batch_size=s.serve.max_batch_size, top_k=int(meta["top_k"]),
                 n_items=int(meta["n_items"]), max_seq_len=int(meta["max_len"]),
                 instance_count=s.serve.instance_count, event_kinds=int(meta.get("event_kinds", 0)))
    path = write_version(repo, s.serve.model_name, onnx_path, metadata={  # the alias lookup gave the whole version
        "registered_model": name, "model_version": version_id, "alias": CHAMPION,
        "run_id": champion.run_id, "tracking_uri": uri, **champion.tags,
    })
    return _finish_deploy(s, p, {"version_path": str(path), "triton_version": int(path.name),
                                 "model_version": version_id, "new": True})


def _finish_deploy(s: Settings, p: Paths, summary: dict[str, Any]) -> dict[str, Any]:
    """Write similar_items and recommend beside gpt4rec, load what changed in a running Triton, report."""
    from pipelines.repository.companions import deploy_companions
    from pipelines.serve.daemon import load_in_running_server

    models: dict[str, dict[str, Any]] = {s.serve.model_name: {
        "version_path": summary["version_path"], "triton_version": summary["triton_version"], "new": summary["new"]}}
    models |= deploy_companions(s, p, p.triton_repo, Path(summary["version_path"]))
    changed = [name for name, m in models.items() if m.get("new") or m.get("config_changed")]
    loaded, errors = load_in_running_server(s.serve.http_port, [n for n, m in models.items() if "skipped" not in m],
                                            changed=changed, timeout_s=s.serve.startup_timeout_s)
    summary |= {"reloaded_running_server": s.serve.model_name in loaded, "models": models, "loaded": loaded,
                "load_errors": errors}
    for name, message in errors.items():
        print(f"DEPLOY: the running Triton could not load {name!r} (the previous version keeps serving): {message}")
    write_json_atomic(p.reports / "deploy.json", summary)
    return summary


def serve_check(s: Settings, p: Paths) -> dict[str, Any]:
    """Start the real Triton, load the deployed model, ask it for 3 sessions, compare with ONNX Runtime."""
    from pipelines.serve.check import check_served_model

    summary = check_served_model(s, p)
    write_json_atomic(p.reports / "serve_check.json", summary)
    return summary
