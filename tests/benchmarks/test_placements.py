"""The placements benchmark end to end on a tiny world: every placement, every family and the served blend."""

import json

from benchmarks.placements import BLENDED, PLACEMENT_FAMILIES, run_placements

TINY = ["data.n_products=100", "data.n_users=300", "gpt4rec.epochs=1", "gpt4rec.dim=16",
        "gpt4rec.init_from_prod2vec=false", "ncf.epochs=1", "mf.iterations=2"]


def test_every_placement_has_each_family_and_the_blend_relative_to_the_static_list(tmp_path):
    path = run_placements(40, TINY, out_dir=tmp_path)
    report = json.loads(path.read_text())
    assert list(report["placements"]) == ["home", "product", "cart"]
    for placement, rows in report["placements"].items():
        assert list(rows) == [*PLACEMENT_FAMILIES, BLENDED], placement
        assert rows["popularity"]["ctr_vs_static"] == 0.0 and rows["popularity"]["coverage"] == 1.0
        for family, m in rows.items():
            assert 0 <= m["purchase_rate"] <= m["add_to_cart_rate"] <= m["ctr"] <= 1, (placement, family)
            assert 0 <= m["coverage"] <= 1 and m["lists"] == 40
    assert report["code"]["git_commit"], "the report names the code it measured"
    assert (tmp_path / "placements.md").read_text().startswith("# Placements")
    assert (tmp_path / "placements.png").stat().st_size > 0
