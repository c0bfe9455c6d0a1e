"""The quality benchmark end to end on a tiny world: every family on one leaderboard."""

import json

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
