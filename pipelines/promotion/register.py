"""The register stage, step by step: lineage, MLflow runs, the ONNX model as `challenger`, then the gate.

The gate scores champion and challenger on the validation split, checks guard metrics, export parity
and Triton latency, and moves `champion` only when all pass and `gate.promote` is on; only after
the decision is recorded is the test split read, once, to report both models' test figures
(pipelines/promotion/splits.py). Re-registering the
same model (same fingerprint: data content hash and the params that shape the model) changes
nothing. A task killed after registering but before the gate decided leaves a version without a
`gate_decision` tag; the retry reuses that version and finishes the gate. A corrupt or incompatible
ONNX file is rejected before anything is registered.

With a person in the loop (the DAG's `require_approval`), the stage runs as a dry run and `approve`
applies the gate's recorded decision once that person says yes; a rejection changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.config import EvaluateSettings, Paths, Settings
from pipelines.core.files import fresh_dir, read_json, write_json_atomic
from pipelines.data.sequences import META_FILE, Sequences, load_sequences
from pipelines.models.user_vectors import USERS_ARTIFACT, USERS_FILE
from pipelines.promotion import aliases
from pipelines.promotion.gate import (
    DECISION_SPLIT,
    GateReport,
    IncompatibleModel,
    artifact_checks,
    decide,
    onnx_metrics,
    reason_of,
    triton_latency,
)
from pipelines.promotion.splits import SealedTestSplit, validation_view
from pipelines.track import lineage
from pipelines.track.service import CHAMPION, GATE_TAG, MlflowService

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

# params.yaml sections that do not change the trained model: left out of the fingerprint.
NOT_MODEL_SECTIONS = ("serve", "mlflow", "gate", "validate", "service_retries")
# Model families and the params.yaml sections logged with each one's MLflow child run.
FAMILY_SECTIONS: dict[str, tuple[str, ...]] = {"gpt4rec": ("gpt4rec", "prod2vec", "graph", "export")}


@dataclass
class RegistryResult:
    """What the register stage did (reports/pipeline/registry.json, the Airflow XCom)."""

    model_name: str
    version: str
    run_id: str
    experiment_id: str
    tracking_uri: str
    promoted: bool
    reason: str
    champion_version: str
    reused: bool
    parent_run_id: str = ""
    child_run_ids: dict[str, str] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)

    def publish(self, p: Paths) -> dict[str, Any]:
        """Write registry.json; returns what was written, as the stage's result."""
        path = p.reports / "registry.json"
        write_json_atomic(path, asdict(self))
        return json.loads(path.read_text())


def fingerprint(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def model_params(flat: dict[str, Any]) -> str:
    """The params that shape the model, as canonical JSON (fingerprint input)."""
    return json.dumps({k: v for k, v in flat.items() if k.split(".", 1)[0] not in NOT_MODEL_SECTIONS},
                      sort_keys=True, default=str)


# --------------------------------------------------------------------------- lineage


@dataclass
class Lineage:
    """Where this model comes from: the tags of its runs and version, and the data it was trained on."""

    tags: dict[str, str]
    content_md5: str
    dag_run_id: str


def dataset_name(p: Paths) -> str:
    """The dataset the validated tables came from (source.json), for the MLflow lineage tag."""
    source = p.validated / "source.json"
    return str(json.loads(source.read_text()).get("dataset", "")) if source.exists() else "synthetic"


def lineage_tags(p: Paths) -> Lineage:
    """Code commit, DVC and content hashes of the data, dataset and Airflow run, as MLflow tags."""
    data = lineage.data_version(p.root, p.validated)
    dag_run_id = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    tags = {
        "git_commit": lineage.git_commit(p.root),
        "data_dvc_md5": data["dvc_md5"] or "",
        "data_content_md5": data["content_md5"],
        "data_raw_dvc_md5": lineage.dvc_locked_hash(p.root, "data/raw") or "",
        "data_raw_content_md5": lineage.content_hash(p.raw) if p.raw.exists() else "",
        "dataset": dataset_name(p),
        "airflow_dag_run_id": dag_run_id,
    }
    return Lineage(tags, str(data["content_md5"]), dag_run_id)


def _version_of(found: ModelVersion | None) -> str | None:
    return str(found.version) if found is not None else None


# --------------------------------------------------------------------------- before registering


def already_gated(service: MlflowService, name: str, fp: str, content_md5: str, p: Paths) -> RegistryResult | None:
    """The no-op: this fingerprint is registered and its gate decided, so the registry already has this model.

    gate.json still says so (it is the stage's declared output): no new decision, the earlier one quoted.
    """
    existing = service.find_version(name, fp)
    if existing is None or not existing.tags.get(GATE_TAG):
        return None
    reason = (f"no-op: this model (data {content_md5[:8]}, fingerprint {fp[:8]}) is already "
              f"registered as v{existing.version}; aliases unchanged")
    champion = _version_of(service.alias_version(name, CHAMPION))
    report = GateReport(str(existing.version), champion, False, False, reason,
                        compared_on=f"nothing new: v{existing.version} was gated before "
                                    f"({existing.tags[GATE_TAG]})")
    report.save(p.reports / "gate.json")
    print(f"REGISTRY: {reason}")
    return RegistryResult(name, str(existing.version), existing.run_id, service.experiment_id, service.tracking_uri,
                          promoted=False, reason=reason, reused=True, champion_version=champion or "",
                          gate=report.to_dict())


def rejected_artifact(service: MlflowService, name: str, onnx_path: Path, p: Paths) -> RegistryResult | None:
    """The artifact itself, before anything is registered: a corrupt or incompatible file is rejected here."""
    checks = artifact_checks(onnx_path, int(read_json(p.features / META_FILE)["n_items"]))
    if all(c.passed for c in checks):
        return None
    champion_version = _version_of(service.alias_version(name, CHAMPION))
    reason = reason_of(False, checks, champion_version)
    report = GateReport("", champion_version, False, False, reason, checks,
                        compared_on="the challenger artifact alone (not registered)")
    report.save(p.reports / "gate.json")
    print(report.table())
    return RegistryResult(name, "", "", service.experiment_id, service.tracking_uri, promoted=False, reason=reason,
                          champion_version=champion_version or "", reused=False, gate=report.to_dict())


# --------------------------------------------------------------------------- runs and the registered version


def log_runs(service: MlflowService, p: Paths, source: Lineage, params: dict[str, Any], fp: str,
             metrics_all: dict[str, dict[str, float]]) -> tuple[str, dict[str, str]]:
    """The parent run (params, reports) and a child run per model family (its params, metrics, model files)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent_id = service.pipeline_run(source.dag_run_id, f"retrain {source.dag_run_id or 'local ' + stamp}",
                                     source.tags)
    service.log_values(parent_id, params=params, tags={"fingerprint": fp})
    service.log_artifacts(parent_id, {"reports": p.reports / "metrics.json", "plots": p.reports / "metrics.png",
                                      "reports/validation": p.reports / "validation.md",
                                      "reports/parity": p.reports / "parity.json"})
    children: dict[str, str] = {}
    for family, metrics in metrics_all.items():
        run_id = service.child_run(parent_id, family, source.tags)
        sections = ("data", "evaluate", *FAMILY_SECTIONS.get(family, (family,)))
        service.log_values(run_id, params={k: v for k, v in params.items() if k.split(".", 1)[0] in sections},
                           metrics={k: v for k, v in metrics.items() if k != "n_users"})
        if (p.models / family).is_dir():
            service.log_artifacts(run_id, {"model": p.models / family})
        children[family] = run_id
    return parent_id, children


def register_challenger(service: MlflowService, name: str, run_id: str, onnx_path: Path, p: Paths,
                        tags: dict[str, str]) -> str:
    """The ONNX model logged to the GPT4Rec run, registered (or found by fingerprint), aliased `challenger`; its
    stored user vectors beside it under their own artifact path (deploy reads the champion's from there)."""
    service.log_artifacts(run_id, {"embeddings/prod2vec": p.embeddings / "prod2vec" / "meta.json",
                                   USERS_ARTIFACT: p.models / "gpt4rec" / USERS_FILE})
    version = service.log_onnx_model(run_id, onnx_path, name, tags)
    aliases.mark_challenger(service, name, version)
    return version


def log_lineage(service: MlflowService, run_id: str, p: Paths, params: dict[str, Any], family: str) -> None:
    """What `rxrec reproduce` rebuilds this run from, on the version's run: the run's dvc.lock, its params
    (overrides included) and the code commit (pipelines/stages/reproduce.py)."""
    from pipelines.track.live import dvc_remote_url

    commit = lineage.git_commit(p.root)
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in params.items():
        section, key = dotted.split(".", 1)
        nested.setdefault(section, {})[key] = value
    facts = {"git_commit": commit.removesuffix("-dirty"), "git_dirty": commit.endswith("-dirty"),
             "model_stage": f"train_{family}", "dvc_remote": dvc_remote_url(p.root), "workdir": str(p.root)}
    bundle = lineage.write_bundle(p.root, fresh_dir(p.var / "lineage"), nested, facts)
    service.log_artifacts(run_id, {lineage.LINEAGE_ARTIFACT: bundle})


# --------------------------------------------------------------------------- the gate


@dataclass
class Scores:
    """Both models' validation metrics, and which champion they were taken from."""

    challenger: dict[str, float]
    champion: ModelVersion | None
    champion_metrics: dict[str, float] | None
    compared_on: str
    resumed: bool  # an interrupted attempt had already made the challenger champion
    champion_onnx: Path | None = None  # the champion's file, when it was scored on today's data


def score(service: MlflowService, name: str, version: str, onnx_path: Path, p: Paths,
          evaluation: EvaluateSettings, content_md5: str, valid: Sequences) -> Scores:
    """Both exported models scored on the validation split of today's data by the same code.

    `valid` is the gate's view (test targets blanked). A champion that cannot be scored on it
    (another catalogue) is compared by its logged metrics.
    """
    k, cold = evaluation.k, evaluation.cold_max_interactions
    challenger_metrics = onnx_metrics(onnx_path, valid, DECISION_SPLIT, k, cold, max_users=evaluation.max_users)
    champion = service.alias_version(name, CHAMPION)
    champion_metrics: dict[str, float] | None = None
    champion_onnx: Path | None = None
    compared_on = f"validation split of data {content_md5[:8]} (ONNX Runtime, both models)"
    resumed = champion is not None and str(champion.version) == version
    if resumed:  # an interrupted attempt already promoted this version: compare with the one it replaced
        past = [v for v in aliases.history(service, name) if v != version]
        champion = service.get_version(name, past[-1]) if past else None
    if champion is not None:
        try:
            staged = service.download_model(f"models:/{name}/{champion.version}",
                                            fresh_dir(p.var / "gate" / "champion"))
            champion_metrics = onnx_metrics(staged, valid, DECISION_SPLIT, k, cold, max_users=evaluation.max_users)
            champion_onnx = staged
        except IncompatibleModel as exc:
            champion_metrics = service.run_metrics(champion.run_id)
            compared_on = f"champion's logged metrics on its own data ({exc})"
    return Scores(challenger_metrics, champion, champion_metrics, compared_on, resumed, champion_onnx)


def decide_and_apply(service: MlflowService, s: Settings, name: str, version: str, scores: Scores,
                     parity_passed: bool, latency: dict[str, float] | None,
                     training: dict[str, Any] | None = None) -> GateReport:
    """The gate's verdict, and `champion` moved to the challenger when it passes and `gate.promote` is on."""
    verdict, checks = decide(s.gate, scores.challenger, scores.champion_metrics, parity_passed=parity_passed,
                             latency=latency, training=training)
    champion_version = _version_of(scores.champion)
    applied = verdict and s.gate.promote
    reason = reason_of(verdict, checks, champion_version)
    if verdict and not applied:
        reason = f"dry run (gate.promote=false), would be {reason}"
    if scores.resumed and not applied:
        reason += f" (note: an interrupted attempt had already made v{version} champion; it stays)"
    if applied:
        aliases.promote(service, name, version, by="gate", reason=reason)
    return GateReport(version, champion_version, verdict, applied, reason, checks, scores.challenger,
                      scores.champion_metrics or {}, scores.compared_on, latency or {})


def record_decision(service: MlflowService, name: str, parent_id: str, report: GateReport, p: Paths) -> None:
    """gate.json and the task log; the decision on the version, its numbers and gate.json on the parent run."""
    report.save(p.reports / "gate.json")
    print(report.table())
    service.tag_version(name, report.challenger_version, GATE_TAG, report.reason)
    gate_metrics = {f"gate.{DECISION_SPLIT}.challenger.{m}": v for m, v in report.valid_challenger.items()}
    gate_metrics |= {f"gate.{DECISION_SPLIT}.champion.{m}": v for m, v in report.valid_champion.items()}
    gate_metrics |= {f"gate.latency_{m}": v for m, v in report.latency.items()}
    decision = "promote" if report.applied else ("dry-run" if report.promote else "reject")
    service.log_values(parent_id, metrics=gate_metrics, tags={
        "gate.decision": decision, "gate.reason": report.reason, "gate.decided_on": report.decided_on,
        "gate.challenger_version": report.challenger_version,
        "gate.champion_version": report.champion_version or ""})
    service.log_artifacts(parent_id, {"gate": p.reports / "gate.json"})


def report_test(service: MlflowService, name: str, parent_id: str, report: GateReport, scores: Scores,
                onnx_path: Path, test: Sequences, p: Paths, evaluation: EvaluateSettings, content_md5: str) -> None:
    """After the decision: both models' test figures into gate.json, the log and the parent run (report only)."""
    k, cold = evaluation.k, evaluation.cold_max_interactions
    report.test_challenger = onnx_metrics(onnx_path, test, "test", k, cold, max_users=evaluation.max_users)
    if scores.champion_onnx is not None:
        report.test_champion = onnx_metrics(scores.champion_onnx, test, "test", k, cold, max_users=evaluation.max_users)
    report.test_reported_on = f"test split of data {content_md5[:8]} (ONNX Runtime" + (
        ", both models)" if report.test_champion else ", challenger only)")
    report.save(p.reports / "gate.json")
    print(report.test_table())
    figures = {f"report.test.challenger.{m}": v for m, v in report.test_challenger.items()}
    figures |= {f"report.test.champion.{m}": v for m, v in report.test_champion.items()}
    service.log_values(parent_id, metrics=figures)
    service.log_artifacts(parent_id, {"gate": p.reports / "gate.json"})


def run_gate(service: MlflowService, s: Settings, p: Paths, name: str, version: str, onnx_path: Path,
             parent_id: str, content_md5: str, *, valid: Sequences, test_split: SealedTestSplit,
             parity_passed: bool, latency: dict[str, float] | None,
             training: dict[str, Any] | None = None) -> GateReport:
    """Score on validation, decide, record the decision; then read the test split once and report it.

    `training`: the challenger's train.json. The registered version's description becomes the decision
    table with both splits' figures.
    """
    scores = score(service, name, version, onnx_path, p, s.evaluate, content_md5, valid)
    report = decide_and_apply(service, s, name, version, scores, parity_passed, latency, training)
    record_decision(service, name, parent_id, report, p)
    report_test(service, name, parent_id, report, scores, onnx_path, test_split.open(report), p, s.evaluate,
                content_md5)
    service.describe_version(name, version, report.markdown())  # the version's page shows the decision table
    return report


# --------------------------------------------------------------------------- the stage


def register(s: Settings, p: Paths) -> dict[str, Any]:
    """MLflow runs (parent + a child per model), the ONNX model as `challenger`, then the promotion gate."""
    service = MlflowService.from_settings(s, p)
    name, params = s.mlflow.registered_model, s.flat()
    metrics_all = read_json(p.reports / "metrics.json")["models"]
    parity_passed = bool(read_json(p.reports / "parity.json")["passed"])
    source = lineage_tags(p)
    fp = fingerprint(source.content_md5, model_params(params))
    onnx_path = p.onnx / "gpt4rec" / "model.onnx"

    done = already_gated(service, name, fp, source.content_md5, p) or rejected_artifact(service, name, onnx_path, p)
    if done is not None:
        return done.publish(p)

    parent_id, children = log_runs(service, p, source, params, fp, metrics_all)
    run_id = children["gpt4rec"]
    log_lineage(service, run_id, p, params, "gpt4rec")
    version = register_challenger(service, name, run_id, onnx_path, p,
                                  {**source.tags, "fingerprint": fp, "parent_run_id": parent_id})

    valid = validation_view(load_sequences(p.features))
    latency = triton_latency(onnx_path, s, p, s.gate.latency_requests, valid) if s.gate.latency_budget_ms > 0 \
        else None
    report = run_gate(service, s, p, name, version, onnx_path, parent_id, source.content_md5, valid=valid,
                      test_split=SealedTestSplit(lambda: load_sequences(p.features)), parity_passed=parity_passed,
                      latency=latency, training=read_json(p.models / "gpt4rec" / "train.json"))

    champion = _version_of(service.alias_version(name, CHAMPION))
    return RegistryResult(name, version, run_id, service.experiment_id, service.tracking_uri, promoted=report.applied,
                          reason=report.reason, champion_version=champion or "", reused=False,
                          parent_run_id=parent_id, child_run_ids=children, gate=report.to_dict()).publish(p)


# --------------------------------------------------------------------------- a person's approval

APPROVED_TAG = "promotion_approved_by"  # model-version tag: who approved the gate's decision, and why


class ApprovalError(RuntimeError):
    """The registry.json a person was asked about cannot be applied (nothing to approve, or it is stale)."""


def awaiting_approval(registry: dict[str, Any]) -> str | None:
    """Why this register result (registry.json) leaves nothing for a person to approve; None when its
    challenger passed the gate and `champion` was left where it was, waiting for that person."""
    gate = registry.get("gate") or {}
    if registry.get("reused"):
        return f"the registry already had this model (v{registry.get('version')}): {registry.get('reason')}"
    if not registry.get("version") or not gate:
        return f"no challenger was registered: {registry.get('reason')}"
    if not gate.get("promote"):
        return f"the gate rejected v{registry['version']}: {gate.get('reason')}"
    if gate.get("applied"):
        return f"the gate already made v{registry['version']} champion"
    return None


def approval_request(registry: dict[str, Any]) -> tuple[str, str]:
    """Subject and Markdown body a person approves: the gate's checks and both models' validation figures.

    Validation only, as the gate decided: the test figures are the report after the decision, and a person
    choosing on them would be model selection on the test split.
    """
    gate = registry["gate"]
    version, champion = registry["version"], gate.get("champion_version")
    label = f"champion v{champion}" if champion else "champion (none yet)"
    subject = f"Make {registry['model_name']} v{version} the champion?"
    split = gate.get("decided_on", "validation")
    lines = [
        f"The promotion gate **passed** challenger **v{version}** against {label}, on the {split} split.",
        f"Compared on: {gate.get('compared_on', '')}.",
        "Approve: it becomes `champion` and is deployed to Triton. Reject: the registry and Triton stay as they are.",
        "",
        f"| metric ({split}) | challenger v{version} | {label} |",
        "|---|---|---|",
    ]
    challenger, current = gate.get("valid_challenger") or {}, gate.get("valid_champion") or {}
    for name in sorted(set(challenger) | set(current)):
        lines.append(f"| {name} | {_figure(challenger.get(name))} | {_figure(current.get(name))} |")
    lines += ["", *[f"- {'ok' if c['passed'] else 'FAIL'} **{c['name']}**: {c['detail']}"
                    for c in gate.get("checks") or []]]
    if gate.get("latency"):
        lines.append(f"- Triton latency (ms): {', '.join(f'{k} {v:g}' for k, v in gate['latency'].items())}")
    return subject, "\n".join(lines)


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def approve(service: MlflowService, registry: dict[str, Any], approved_by: str, comment: str) -> dict[str, Any]:
    """Make the challenger a person approved `champion`: the gate's decision of this register result, applied.

    Refused (ApprovalError, nothing changed) when there was nothing to approve or when `champion` moved
    since the gate compared against it (the comparison is stale: run the DAG again). Approving a version
    that is already champion (a retried task) changes nothing. Recorded on the version (tag), in the
    champion moves (by "approval") and on the run's parent MLflow run (gate.decision = promote).
    """
    why_not = awaiting_approval(registry)
    if why_not:
        raise ApprovalError(f"nothing to approve: {why_not}")
    name, version, gate = registry["model_name"], str(registry["version"]), registry["gate"]
    decided_against = str(gate.get("champion_version") or "") or None
    current = _version_of(service.alias_version(name, CHAMPION))
    result = {"model_name": name, "version": version, "previous_champion": current, "approved_by": approved_by,
              "tracking_uri": service.tracking_uri}
    if current == version:
        return {**result, "promoted": False, "reason": f"v{version} is already the champion: nothing changed"}
    if current != decided_against:
        raise ApprovalError(
            f"{name} champion is v{current} in {service.tracking_uri}, but the gate compared v{version} with "
            f"{f'v{decided_against}' if decided_against else 'no champion'}: the decision is stale, nothing was "
            "changed; trigger the DAG again to compare with the current champion")
    note = f"{approved_by}: {comment}" if comment.strip() else approved_by
    reason = f"approved by {note} after the gate passed it: {gate.get('reason', '')}"
    service.tag_version(name, version, APPROVED_TAG, note[:aliases.REASON_MAX_CHARS])
    aliases.promote(service, name, version, by="approval", reason=reason)
    if registry.get("parent_run_id"):
        service.log_values(registry["parent_run_id"], tags={"gate.decision": "promote", "gate.approved_by": note})
    description = service.get_version(name, version).description or ""
    service.describe_version(name, version, f"{description}\n\n**Approved** by {note}.".strip())
    return {**result, "promoted": True, "reason": reason}
