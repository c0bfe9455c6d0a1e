"""The embedding stages on the tiny world: each writes its table, metrics and an MLflow run."""

import json

import numpy as np
import pytest

from pipelines.core.config import Paths
from pipelines.embed.prod2vec import ItemEmbeddings
from pipelines.stages import run_stage

STAGES = ("generate", "validate", "sequences", "prod2vec", "tfidf", "text_encoder", "meta_prod2vec",
          "similar_products")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, tiny_overrides):
    root = tmp_path_factory.mktemp("embed")
    overrides = [*tiny_overrides, "meta_prod2vec.dim=16", "meta_prod2vec.epochs=2", "text_encoder.batch_size=32"]
    summaries = {name: run_stage(name, overrides, workdir=root) for name in STAGES}
    return Paths(root), summaries


def test_every_method_writes_a_table_metrics_and_a_tracked_run(embedded):
    paths, summaries = embedded
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{paths.var / 'mlflow.db'}", registry_uri=f"sqlite:///{paths.var / 'mlflow.db'}")
    for method in ("prod2vec", "tfidf", "text_encoder", "meta_prod2vec"):
        emb = ItemEmbeddings.load(paths.embeddings / method)
        assert emb.known.any() and not emb.known[0]
        assert (paths.embeddings / method / "map.png").stat().st_size > 0
        run = client.get_run(summaries[method]["mlflow_run_id"])
        assert "hr_at_10" in run.data.metrics and run.data.tags["method"] == method
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "embeddings")}
        assert any(a.endswith("meta.json") for a in artifacts)
    assert "graph.window" in client.get_run(summaries["prod2vec"]["mlflow_run_id"]).data.params


def test_meta_prod2vec_shares_the_walks_and_reads_off_field_importance(embedded):
    paths, summaries = embedded
    assert summaries["meta_prod2vec"]["walks_sha256"] == summaries["prod2vec"]["walks_sha256"]
    importance = summaries["meta_prod2vec"]["field_importance"]
    assert {"therapeutic_class", "uses"} <= set(importance) and "item_id" not in importance  # meta fields only
    assert abs(sum(importance.values()) - 1) < 1e-3
    assert (paths.embeddings / "meta_prod2vec" / "field_importance.png").exists()
    emb = ItemEmbeddings.load(paths.embeddings / "meta_prod2vec")
    assert emb.extra["field_weights"].shape == (emb.n_items + 1, len(importance) + 1)  # column 0: the id's share


def test_cold_items_get_meta_embeddings_but_not_prod2vec_ones(embedded):
    paths, _ = embedded
    p2v = ItemEmbeddings.load(paths.embeddings / "prod2vec")
    meta = ItemEmbeddings.load(paths.embeddings / "meta_prod2vec")
    cold = ~p2v.known
    cold[0] = False
    assert cold.any(), "the tiny world should have items without training interactions"
    assert meta.known[cold].all()
    assert np.linalg.norm(meta.vectors[cold], axis=1).min() > 0


def test_similar_products_compares_all_methods(embedded):
    paths, _summaries = embedded
    report = json.loads((paths.reports / "embeddings.json").read_text())
    assert set(report["methods"]) == {"popularity", "prod2vec", "tfidf", "text_encoder", "meta_prod2vec"}
    for row in report["methods"].values():
        assert {"hr_at_10", "ndcg_at_10", "cold_hr_at_10", "unseen_hr_at_10"} <= set(row)
        assert 0 <= row["ndcg_at_10"] <= row["hr_at_10"] <= 1
    assert report["methods"]["prod2vec"]["unseen_hr_at_10"] == 0.0  # no vector without interactions
    import pandas as pd

    table = pd.read_parquet(paths.artifacts / "similar" / "neighbours.parquet")
    assert len(table) > 0 and all(len(x) == 10 for x in table["similar"])
