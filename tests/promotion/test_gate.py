"""The gate's decision as a table: numbers in, (promote, checks) out; no registry, no server."""

from __future__ import annotations

import pytest

from pipelines.core.config import GateSettings
from pipelines.promotion.gate import GateCheck, decide, reason_of

GOOD = {"ndcg_at_10": 0.30, "hr_at_10": 0.50, "coverage_at_10": 0.40, "cold_start_hr_at_10": 0.10}
FAST = {"p50_ms": 2.0, "p95_ms": 5.0, "max_ms": 9.0, "requests": 40.0}


def _with(base: dict[str, float], **changes: float) -> dict[str, float]:
    return {**base, **changes}


# (case, gate overrides, challenger, champion, parity passed, latency) -> promote, failing checks
TABLE = [
    ("no champion yet", {}, GOOD, None, True, FAST, True, []),
    ("better than champion", {}, GOOD, _with(GOOD, ndcg_at_10=0.20), True, FAST, True, []),
    ("equal to champion (must beat it)", {}, GOOD, GOOD, True, FAST, False, ["ndcg_at_10"]),
    ("better, but not by the margin", {"min_improvement": 0.2}, GOOD, _with(GOOD, ndcg_at_10=0.20), True, FAST,
     False, ["ndcg_at_10"]),
    ("coverage drops past its tolerance", {}, GOOD, _with(GOOD, ndcg_at_10=0.2, coverage_at_10=0.6), True, FAST,
     False, ["guard coverage_at_10"]),
    ("coverage drops within its tolerance", {}, GOOD, _with(GOOD, ndcg_at_10=0.2, coverage_at_10=0.45), True, FAST,
     True, []),
    ("cold-start HR drops past its tolerance", {}, GOOD, _with(GOOD, ndcg_at_10=0.2, cold_start_hr_at_10=0.2),
     True, FAST, False, ["guard cold_start_hr_at_10"]),
    ("guard metric missing on one side: skipped", {},
     {k: v for k, v in GOOD.items() if k != "cold_start_hr_at_10"}, _with(GOOD, ndcg_at_10=0.2, cold_start_hr_at_10=0.9),
     True, FAST, True, []),
    ("parity failure", {}, GOOD, None, False, FAST, False, ["export parity"]),
    ("parity failure ignored when not required", {"require_parity": False}, GOOD, None, False, FAST, True, []),
    ("latency over budget", {"latency_budget_ms": 4.0}, GOOD, None, True, FAST, False, ["serving latency"]),
    ("latency not measured", {}, GOOD, None, True, None, False, ["serving latency"]),
    ("latency not checked with budget 0", {"latency_budget_ms": 0.0}, GOOD, None, True, None, True, []),
    ("every cause listed", {"latency_budget_ms": 4.0}, GOOD, _with(GOOD, ndcg_at_10=0.4, coverage_at_10=0.9), False,
     FAST, False, ["export parity", "serving latency", "ndcg_at_10", "guard coverage_at_10"]),
]


@pytest.mark.parametrize(("case", "overrides", "challenger", "champion", "parity", "latency", "promote", "failing"),
                         TABLE, ids=[row[0] for row in TABLE])
def test_decision_table(case, overrides, challenger, champion, parity, latency, promote, failing):
    verdict, checks = decide(GateSettings(**overrides), challenger, champion, parity_passed=parity, latency=latency)
    assert verdict is promote, case
    assert [c.name for c in checks if not c.passed] == failing, case


def test_checks_name_the_numbers_they_were_decided_on():
    _, checks = decide(GateSettings(latency_budget_ms=4.0), GOOD, _with(GOOD, ndcg_at_10=0.2), parity_passed=True,
                       latency=FAST)
    details = {c.name: c.detail for c in checks}
    assert details["serving latency"] == "p95 5.0 ms through Triton > budget 4.0 ms"
    assert details["ndcg_at_10"] == "challenger 0.3000 > champion 0.2000 + margin 0"
    assert details["guard coverage_at_10"].startswith("challenger 0.4000 vs champion 0.4000: drop +0.0000 <=")


def test_an_unmeasured_primary_metric_is_an_error_not_a_reject():
    with pytest.raises(KeyError, match="gate.primary_metric 'mrr' is not measured"):
        decide(GateSettings(primary_metric="mrr"), GOOD, None, parity_passed=True, latency=FAST)


def test_reason_names_the_primary_metric_or_every_failed_check():
    passed = [GateCheck("export parity", True, "ok"), GateCheck("ndcg_at_10", True, "0.3000, no champion yet")]
    assert reason_of(True, passed, None) == "promoted: 0.3000, no champion yet"
    failed = [GateCheck("export parity", False, "differs"), GateCheck("ndcg_at_10", False, "worse"),
              GateCheck("guard coverage_at_10", True, "fine")]
    assert reason_of(False, failed, "3") == "rejected (champion v3 kept): export parity: differs; ndcg_at_10: worse"
    assert reason_of(False, failed, None).startswith("rejected (no champion): ")


def test_the_report_says_it_decided_on_validation_and_keeps_test_figures_apart():
    from pipelines.promotion.gate import GateReport

    report = GateReport("2", "1", True, True, "promoted: challenger 0.3000 > champion 0.2000 + margin 0",
                        [GateCheck("ndcg_at_10", True, "challenger 0.3000 > champion 0.2000 + margin 0")],
                        valid_challenger={"ndcg_at_10": 0.3}, valid_champion={"ndcg_at_10": 0.2},
                        compared_on="validation split of data abcd1234")
    assert report.table().splitlines()[0] == "PROMOTION GATE: PROMOTE challenger v2, decided on validation"
    report.test_challenger, report.test_champion = {"ndcg_at_10": 0.25}, {"ndcg_at_10": 0.27}
    report.test_reported_on = "test split of data abcd1234"
    test_table = report.test_table()
    assert test_table.startswith("TEST REPORT (read after the decision, not used for it): test split of data")
    assert "0.2500" in test_table and "0.3000" not in test_table
    markdown = report.markdown()
    assert "| ndcg_at_10 | validation | 0.3000 | 0.2000 |" in markdown
    assert "| ndcg_at_10 | test (report only) | 0.2500 | 0.2700 |" in markdown


CUT = {"stopped_by": "time_budget", "best_epoch": 1, "best_epoch_fraction": 0.34, "epochs_run": 1,
       "history": [{"epoch": 1, "fraction": 0.34}]}
FINISHED = {"stopped_by": "epochs", "best_epoch": 4, "best_epoch_fraction": 1.0, "epochs_run": 5,
            "history": [{"epoch": e, "fraction": 1.0} for e in range(1, 6)]}
CUT_TEXT = "cut by its time budget in epoch 1 (34% of it trained), best epoch 1 (34% of it trained)"


@pytest.mark.parametrize(("training", "allow", "promote", "detail"), [
    (FINISHED, False, True, "trained every epoch: 5 epochs, best epoch 4"),
    ({**FINISHED, "stopped_by": "patience"}, False, True, "stopped early by patience: 5 epochs, best epoch 4"),
    (CUT, True, True, f"{CUT_TEXT}; allowed by gate.allow_time_budget_cut"),
    (CUT, False, False, f"{CUT_TEXT}; gate.allow_time_budget_cut is off: train longer or raise the budget"),
], ids=["finished", "patience", "cut, allowed", "cut, refused"])
def test_the_decision_names_what_stopped_the_challengers_training(training, allow, promote, detail):
    verdict, checks = decide(GateSettings(allow_time_budget_cut=allow), GOOD, _with(GOOD, ndcg_at_10=0.2),
                             parity_passed=True, latency=FAST, training=training)
    assert verdict is promote
    assert {c.name: c.detail for c in checks}["training"] == detail
    if promote:  # the reason quotes the primary metric, not the training check that comes first
        assert reason_of(verdict, checks, "1") == "promoted: challenger 0.3000 > champion 0.2000 + margin 0"
    else:
        assert reason_of(verdict, checks, "1").startswith("rejected (champion v1 kept): training: cut by its")
