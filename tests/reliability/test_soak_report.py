"""The load class of the reliability report: the last `rxrec bench soak` held up, and its verdicts add up.

The 10-minute soak is a benchmark (run by hand on a quiet machine, reports/soak.json committed),
not something to repeat in every test run. This test reads its report, checks that it soaked long
enough at ~80% of capacity, re-derives its verdicts from the per-window series it recorded (so an
edited or half-written report fails), and records the figures in the reliability ledger.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.common import REPORTS
from benchmarks.soak import ERROR_RATE_LIMIT, memory_growth

SOAK_JSON = REPORTS / "soak.json"
MIN_DURATION_S = 600


@pytest.mark.reliability(kind="load", name="Soak: serving at ~80% of measured capacity for 10 minutes")
def test_last_soak_held_up_and_its_verdicts_add_up(ledger) -> None:
    if not SOAK_JSON.is_file():
        pytest.skip(f"{SOAK_JSON} not found: run `rxrec bench soak` (10 minutes) on a quiet machine and commit it")
    report = json.loads(SOAK_JSON.read_text())
    s, windows, memory = report["summary"], report["windows"], report["memory"]

    # Long enough, at the load it claims, with windows covering the whole run.
    assert s["duration_s"] >= MIN_DURATION_S, f"the soak ran {s['duration_s']} s, not >= {MIN_DURATION_S} s"
    if s["capacity_rps"] is not None:
        assert 0.7 <= s["target_rate"] / s["capacity_rps"] <= 0.9, "the soak was not at ~80% of capacity"
    ends = [w["end_s"] for w in windows]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(s["duration_s"])
    assert len(windows) >= s["duration_s"] / s["window_s"] - 1e-9
    assert sum(w["requests"] for w in windows) == pytest.approx(s["requests"], rel=0.001)
    assert sum(w["errors"] for w in windows) == s["errors"]

    # The verdicts are what the pure functions say about the recorded series.
    again = memory_growth(ends, [w["rss_mb"] for w in windows], warmup_s=memory["warmup_s"],
                          slope_limit_mb_per_min=memory["slope_limit_mb_per_min"], growth_limit=memory["growth_limit"])
    assert again == memory and s["memory_growth"] is again["growth"]
    assert s["error_rate"] == pytest.approx(s["errors"] / s["requests"], abs=1e-6)

    # And it held up: no errors beyond the limit, no memory growth, no latency drift, server still up.
    assert s["error_rate"] <= ERROR_RATE_LIMIT, f"error rate {s['error_rate']:.4%} over {ERROR_RATE_LIMIT:.1%}"
    assert not s["memory_growth"], f"server memory grew: {memory['verdict']}"
    assert not s["latency_drift"], f"p99 drifted {s['p99_first_third_ms']} -> {s['p99_last_third_ms']} ms"
    assert s["server_alive_after"] and s["passed"]
    ledger.record(
        cases=s["requests"],
        outcome=(f"{s['requests']:,} requests in {s['duration_s']:g} s at {s['target_rate']:,.0f} req/s: "
                 f"{s['errors']} errors, p50/p95/p99 {s['p50_ms']}/{s['p95_ms']}/{s['p99_ms']} ms; server RSS "
                 f"{s['rss_start_mb']} -> {s['rss_end_mb']} MB, {memory['verdict']}"),
        nothing_lost=s["errors"] == 0,
        nothing_promoted=True,  # a soak serves one fixed model: there is nothing it could promote
        measured_at=report.get("machine", {}).get("measured_at"),
        memory_growth=s["memory_growth"],
        rss_growth_mb_per_min=s["rss_growth_mb_per_min"],
    )
