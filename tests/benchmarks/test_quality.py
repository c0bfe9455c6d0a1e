"""The quality benchmark end to end on a tiny world: every family on one leaderboard."""

import json

import pytest

from benchmarks.quality import FAMILIES, run_quality

TINY = ["data.n_products=120", "data.n_users=400", "gpt4rec.epochs=1", "gpt4rec.dim=16", "prod2vec.dim=16",
        "prod2vec.epochs=1", "graph.walks_per_node=2", "ncf.epochs=1", "mf.iterations=2", "gru4rec.epochs=1",
        "bert4rec.epochs=1"]  # one epoch each: the leaderboard's shape is tested here, not how well they learn


def test_leaderboard_has_every_family_with_slices_and_business_view(tmp_path):
    path = run_quality("synthetic", FAMILIES, TINY, log_mlflow=False, out_dir=tmp_path)
    report = json.loads(path.read_text())
    assert list(report["models"]) == list(FAMILIES)
    for family, m in report["models"].items():
        for key in ("hr_at_10", "ndcg_at_10", "mrr", "coverage_at_10", "train_seconds"):
            assert 0 <= m[key] and (key == "train_seconds" or m[key] <= 1), (family, key)
        assert set(m["slices"]) == {"cold_start", "long_tail", "users_1_4", "users_5_plus"}
        assert 0 <= m["business"]["ctr"] <= 1
    assert report["models"]["popularity"]["business"]["ctr_lift"] == 0.0
    assert (tmp_path / "quality-synthetic.md").read_text().startswith("# Quality leaderboard")
    assert (tmp_path / "quality-synthetic.png").stat().st_size > 0


def test_seeds_give_mean_and_spread_with_each_seeds_curve_and_the_settings_used(tmp_path):
    """Two seeds of the `quality` recipe: the row is their mean, `spread` their sd, and each seed's run keeps
    its validation curve and what stopped it; the report says which recipe and settings it trained with."""
    families = ("popularity", "gru4rec")
    overrides = [*TINY, "gru4rec.epochs=2"]
    path = run_quality("synthetic", families, overrides, log_mlflow=False, out_dir=tmp_path, recipe="quality", seeds=2)
    report = json.loads(path.read_text())
    assert report["seeds"] == [42, 43] and report["recipe"] == "quality"
    assert report["settings"]["gru4rec"]["lr"] == 0.001 and report["settings"]["gru4rec"]["epochs"] == 2
    gru = report["models"]["gru4rec"]
    assert [run["seed"] for run in gru["runs"]] == [42, 43]
    hrs = [run["hr_at_10"] for run in gru["runs"]]
    assert gru["hr_at_10"] == pytest.approx(sum(hrs) / 2) and gru["spread"]["hr_at_10"] >= 0
    for run in gru["runs"]:
        info = run["train_info"]
        assert info["stopped_by"] == "epochs" and [row["epoch"] for row in info["history"]] == [1, 2]
        assert info["refit"]["epochs"] == info["best_epoch"]  # the recipe refits on train + validation
    assert report["models"]["popularity"]["spread"]["hr_at_10"] == 0.0  # no randomness in counting
    markdown = (tmp_path / "quality-synthetic.md").read_text()
    assert "mean ± sd over 2 seeds (42, 43)" in markdown and "recipe `quality`" in markdown
    assert "| gru4rec | 2, 2 | " in markdown and "Refit: after the best epoch" in markdown
    assert (tmp_path / "quality-synthetic-curves.png").stat().st_size > 0


def test_add_keeps_the_other_rows_with_their_own_commit_and_refuses_a_different_protocol(tmp_path):
    """`--add` puts a family on an existing leaderboard without retraining the others; the kept rows say
    where they were measured, and rows measured with other seeds are never mixed in."""
    first = json.loads(run_quality("synthetic", ("popularity",), TINY, log_mlflow=False, out_dir=tmp_path).read_text())
    path = run_quality("synthetic", ("rules",), TINY, log_mlflow=False, out_dir=tmp_path, add=True)
    report = json.loads(path.read_text())
    assert list(report["models"]) == ["popularity", "rules"]
    kept = report["models"]["popularity"]
    assert kept["hr_at_10"] == first["models"]["popularity"]["hr_at_10"]
    assert kept["measured"] == {"code": first["code"], "measured_at": first["machine"]["measured_at"]}
    assert "measured" not in report["models"]["rules"]
    assert "Rows kept from an earlier run" in (tmp_path / "quality-synthetic.md").read_text()
    with pytest.raises(ValueError, match="seeds: report \\[42\\], this run \\[42, 43\\]"):
        run_quality("synthetic", ("rules",), TINY, log_mlflow=False, out_dir=tmp_path, add=True, seeds=2)
    with pytest.raises(ValueError, match="no such report"):
        run_quality("synthetic", ("rules",), TINY, log_mlflow=False, out_dir=tmp_path / "empty", add=True)
