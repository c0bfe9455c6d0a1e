"""A person's approval of the gate's decision (the DAG's require_approval): what is asked, and what approving does.

On a local SQLite registry: `register` ran as a dry run (challenger registered, champion untouched); `approve`
then moves champion, records who approved, and refuses a stale or empty decision without changing anything.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest

from pipelines.core.config import Paths, load_settings
from pipelines.core.files import write_json_atomic
from pipelines.promotion.aliases import moves, promote
from pipelines.promotion.gate import GateCheck, GateReport
from pipelines.promotion.register import (
    APPROVED_TAG,
    ApprovalError,
    RegistryResult,
    approval_request,
    approve,
    awaiting_approval,
)
from pipelines.stages.promote import approve_challenger
from pipelines.track.service import CHALLENGER, CHAMPION, MlflowService


def _dry_run(service: MlflowService, name: str, *, champion: str | None, verdict: bool = True) -> dict:
    """What register leaves with require_approval on: v2 registered as challenger, the gate's verdict, no move."""
    service.client.create_registered_model(name)
    for _ in range(2):
        service.client.create_model_version(name, source="file:///nowhere/model")
    if champion:
        promote(service, name, champion)
    service.set_alias(name, CHALLENGER, "2")
    parent = service.client.create_run(service.experiment_id, run_name="pipeline").info.run_id
    checks = [GateCheck("ndcg_at_10", verdict, "0.3100 vs champion 0.2500 (margin 0.0)"),
              GateCheck("parity", True, "ONNX top-10 equals torch on 64 sessions")]
    reason = "promoted: beats the champion" if verdict else "rejected: ndcg_at_10 0.2000 <= 0.2500"
    report = GateReport("2", champion, verdict, False, f"dry run (gate.promote=false), would be {reason}"
                        if verdict else reason, checks, {"ndcg_at_10": 0.31, "hr_at_10": 0.5},
                        {"ndcg_at_10": 0.25, "hr_at_10": 0.45} if champion else {}, "validation split of data abcd1234",
                        test_challenger={"ndcg_at_10": 0.99})
    service.describe_version(name, "2", report.markdown())
    return asdict(RegistryResult(name, "2", "run2", service.experiment_id, service.tracking_uri, promoted=False,
                                 reason=report.reason, champion_version=champion or "", reused=False,
                                 parent_run_id=parent, gate=report.to_dict()))


def _alias(service: MlflowService, name: str, alias: str) -> str | None:
    found = service.alias_version(name, alias)
    return str(found.version) if found is not None else None


def test_only_a_passed_and_unapplied_decision_awaits_a_person(registry, request):
    waiting = _dry_run(registry, request.node.name, champion="1")
    assert awaiting_approval(waiting) is None
    assert "already had this model" in awaiting_approval({**waiting, "reused": True, "gate": {}})
    assert "no challenger was registered" in awaiting_approval({**waiting, "version": "", "gate": {}})
    assert "the gate rejected v2" in awaiting_approval({**waiting, "gate": {**waiting["gate"], "promote": False}})
    assert "already made v2 champion" in awaiting_approval({**waiting, "gate": {**waiting["gate"], "applied": True}})


def test_the_question_shows_the_decision_on_validation_only(registry, request):
    subject, body = approval_request(_dry_run(registry, request.node.name, champion="1"))
    assert subject == f"Make {request.node.name} v2 the champion?"
    assert "**passed** challenger **v2** against champion v1, on the validation split" in body
    assert "| ndcg_at_10 | 0.3100 | 0.2500 |" in body and "| hr_at_10 | 0.5000 | 0.4500 |" in body
    assert "- ok **parity**: ONNX top-10 equals torch on 64 sessions" in body
    assert "0.99" not in body, "the test figures are the report after the decision, not shown to the approver"


def test_approving_moves_champion_and_records_who(registry, request):
    name = request.node.name
    decision = _dry_run(registry, name, champion="1")
    result = approve(registry, decision, "admin (Airflow)", "looks good")
    assert result["promoted"] and result["previous_champion"] == "1"
    assert _alias(registry, name, CHAMPION) == "2" and _alias(registry, name, CHALLENGER) is None
    assert registry.get_version(name, "2").tags[APPROVED_TAG] == "admin (Airflow): looks good"
    assert moves(registry, name)[-1]["by"] == "approval" and "approved by admin" in moves(registry, name)[-1]["reason"]
    tags = registry.client.get_run(decision["parent_run_id"]).data.tags
    assert tags["gate.decision"] == "promote" and tags["gate.approved_by"] == "admin (Airflow): looks good"
    assert registry.get_version(name, "2").description.endswith("**Approved** by admin (Airflow): looks good.")
    again = approve(registry, decision, "admin (Airflow)", "looks good")  # a retried task
    assert not again["promoted"] and "already the champion" in again["reason"]
    assert len([m for m in moves(registry, name) if m["by"] == "approval"]) == 1


def test_the_first_model_can_be_approved(registry, request):
    name = request.node.name
    approve(registry, _dry_run(registry, name, champion=None), "admin", "")
    assert _alias(registry, name, CHAMPION) == "2"


def test_a_stale_decision_is_refused_and_changes_nothing(registry, request):
    name = request.node.name
    decision = _dry_run(registry, name, champion="1")
    registry.client.create_model_version(name, source="file:///nowhere/model")
    promote(registry, name, "3", by="manual", reason="hotfix")  # someone moved champion meanwhile
    with pytest.raises(ApprovalError, match=r"champion is v3 .* compared v2 with v1: the decision is stale"):
        approve(registry, decision, "admin", "")
    assert _alias(registry, name, CHAMPION) == "3" and APPROVED_TAG not in registry.get_version(name, "2").tags


def test_a_rejected_challenger_cannot_be_approved(registry, request):
    name = request.node.name
    with pytest.raises(ApprovalError, match="nothing to approve: the gate rejected v2"):
        approve(registry, _dry_run(registry, name, champion="1", verdict=False), "admin", "")
    assert _alias(registry, name, CHAMPION) == "1"


def test_the_stage_entry_reads_registry_json_of_the_work_directory(registry, request, workdir, monkeypatch):
    name = request.node.name
    decision = _dry_run(registry, name, champion="1")
    paths = Paths(workdir)
    write_json_atomic(paths.reports / "registry.json", decision)
    monkeypatch.setenv("RXREC_MLFLOW_TRACKING_URI", registry.tracking_uri)
    settings = load_settings(overrides=[f"mlflow.registered_model={name}", "mlflow.experiment=rxrec"])
    result = approve_challenger(settings, paths, "admin (Airflow)", "ship it")
    assert result["promoted"] and _alias(registry, name, CHAMPION) == "2"
