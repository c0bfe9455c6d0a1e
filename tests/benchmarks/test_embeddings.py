"""The embeddings benchmark end to end on a tiny world: every method, the control row and the verdict."""

from benchmarks.common import load_dataset
from benchmarks.embeddings import SAME_WORDS, _meta_vs_prod2vec, run_embeddings_benchmark
from pipelines.core.config import load_settings
from pipelines.data.sequences import build_sequences

TINY = ["data.n_products=120", "data.n_users=400", "prod2vec.dim=16", "prod2vec.epochs=1", "prod2vec.workers=1",
        "meta_prod2vec.dim=16", "meta_prod2vec.epochs=1", "meta_prod2vec.workers=1", "graph.walks_per_node=2"]


def test_every_method_and_prod2vec_on_as_many_words_as_meta_prod2vec():
    settings = load_settings(overrides=TINY)
    _, world, _ = load_dataset("synthetic", settings)
    seqs = build_sequences(world.events, n_items=int(world.catalogue["item_id"].max()))
    result = run_embeddings_benchmark(seqs, world.catalogue, world.events, settings)
    methods = result["methods"]
    assert list(methods) == ["popularity", "tfidf", "text_encoder", "prod2vec", SAME_WORDS, "meta_prod2vec"]
    assert methods[SAME_WORDS]["epochs"] == 2
    for name, m in methods.items():
        assert 0 <= m["warm_hr_at_10"] <= 1 and 0 <= m["cold_hr_at_10"] <= 1, name
    assert methods["meta_prod2vec"]["items_with_vector"] >= methods["prod2vec"]["items_with_vector"]
    verdict = _meta_vs_prod2vec(methods, 10)
    assert verdict.count("Meta-Prod2Vec against") == 2 and "as many words, no meta" in verdict


def test_the_verdict_needs_warm_at_least_and_cold_above():
    row = {"warm_hr_at_10": 0.10, "cold_hr_at_10": 0.05}
    assert "does NOT hold" in _meta_vs_prod2vec({"prod2vec": row, "meta_prod2vec": row}, 10)
    better_cold = {**row, "cold_hr_at_10": 0.06}
    assert "holds." in _meta_vs_prod2vec({"prod2vec": row, "meta_prod2vec": better_cold}, 10)
    worse_warm = {"warm_hr_at_10": 0.09, "cold_hr_at_10": 0.09}
    assert "does NOT hold" in _meta_vs_prod2vec({"prod2vec": row, "meta_prod2vec": worse_warm}, 10)
