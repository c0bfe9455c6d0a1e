"""The refit check: selected and refit models scored one step earlier, the refit trained for the chosen epochs."""

from __future__ import annotations

from benchmarks.refit import _markdown, run_refit_check
from tests.benchmarks.test_quality import TINY


def test_scores_the_selected_and_the_refit_model_on_the_validation_target_one_step_earlier():
    result = run_refit_check("synthetic", "gru4rec", "quality", None, [*TINY, "gru4rec.epochs=2"])
    assert result["dataset"] == "synthetic" and result["settings"]["refit"] is False  # the selection run itself does not refit
    assert result["refit"]["epochs"] == result["selection"]["best_epoch"] >= 1
    selected, refit = result["scores"]["selected"], result["scores"]["refit"]
    assert selected["n_users"] == refit["n_users"] > 0
    assert 0 <= selected["hr_at_10"] <= 1 and 0 <= refit["hr_at_10"] <= 1 and selected != refit
    markdown = _markdown(result)
    assert "| refit on train + validation |" in markdown and "Refit against selected: NDCG@10" in markdown
