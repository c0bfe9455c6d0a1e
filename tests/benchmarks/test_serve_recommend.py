"""The serve-recommend report's text: every setting it ran with and each variant's rounds, nothing left unfilled."""

from benchmarks.serve_recommend import PLAIN, markdown


def test_the_report_states_the_run_and_every_variants_rounds():
    level = {"requests": 700, "p50_ms": 7.5, "p99_ms": 11.0, "errors": 0, "error_messages": [],
             "machine_busy_cores": 0.9}
    payload = {"gpt4rec": "random weights", "gpt4rec_scoring": "in_process", "policy": "restricted",
               "blends": {"home": "history:10"}, "n_items": 3000,
               "world": {"seed": 42}, "length": 50, "rate_per_s": 60.0, "duration_s": 60.0, "warmup_s": 2.0,
               "rounds": 2, "user_vectors": {"users": 12000, "dim": 64, "retrieval": "exact"},
               "target_added_p50_ms": 1.0, "passed": False, "variants": {PLAIN: [level, level],
                                                                            "home": [level, {**level, "p50_ms": 8.7}]},
               "added_p50_ms": {"home": [0.0, 1.2]}}
    text = markdown(payload)
    assert "{" not in text.replace("{'home'", ""), "an unfilled placeholder"
    assert "60 requests/s" in text and "12,000 users with stored vectors (random, dim 64, exact retrieval)" in text
    assert "both scoring gpt4rec in process" in text
    assert "Overall: FAIL." in text and "| home | 700, 700 | 7.5, 8.7 |" in text and "+0.000, +1.200 (+1.200)" in text
