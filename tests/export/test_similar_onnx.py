"""The similar_items ONNX graphs return numpy's cosine top-k (item itself and vector-less items excluded)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.core.config import SimilarSettings
from pipelines.embed.prod2vec import ItemEmbeddings
from pipelines.export.similar_onnx import build_similar_items, exact_graph

ort = pytest.importorskip("onnxruntime")


def _embeddings(n: int = 40, dim: int = 6, seed: int = 0) -> ItemEmbeddings:
    rng = np.random.default_rng(seed)
    known = np.ones(n + 1, dtype=bool)
    known[[0, 7, 19]] = False  # padding and two items without a vector
    vectors = rng.normal(size=(n + 1, dim)).astype(np.float32)
    vectors[~known] = 0.0
    return ItemEmbeddings(vectors, known, {"method": "toy"})


def _numpy_top_k(emb: ItemEmbeddings, items: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    vectors = emb.dense()
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit[items] @ unit.T
    sims[:, ~emb.known] = -np.inf
    sims[np.arange(len(items)), items] = -np.inf
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(sims, ids, axis=1)


def _run(model, items: list[int]) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["item_ids", "scores"], {"item_id": np.array([[i] for i in items], dtype=np.int64)})


@pytest.mark.parametrize("max_exact_bytes", [1 << 30, 0], ids=["exact", "table"])
def test_graph_matches_numpy_cosine_top_k(max_exact_bytes: int) -> None:
    emb = _embeddings()
    graph = build_similar_items(emb, SimilarSettings(k=5), max_exact_bytes=max_exact_bytes)
    assert graph.mode == ("exact" if max_exact_bytes else "table") and graph.top_k == 5 and graph.n_items == 40
    items = [1, 2, 18, 40]
    ids, scores = _run(graph.model, items)
    want_ids, want_scores = _numpy_top_k(emb, items, 5)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert not set(ids.ravel()) & {0, 7, 19, *items[:1]}
    meta = {p.key: p.value for p in graph.model.metadata_props}
    assert meta == {"n_items": "40", "top_k": "5", "mode": graph.mode, "method": "toy"}


def test_sparse_tables_use_the_neighbour_table() -> None:
    dense = _embeddings()
    emb = ItemEmbeddings(sp.csr_matrix(dense.vectors), dense.known, {"method": "tfidf"})
    graph = build_similar_items(emb, SimilarSettings(k=3))
    assert graph.mode == "table"
    ids, _ = _run(graph.model, [3])
    np.testing.assert_array_equal(ids, _numpy_top_k(dense, [3], 3)[0])


def test_k_shrinks_to_what_a_tiny_table_can_answer() -> None:
    emb = ItemEmbeddings(np.eye(4, dtype=np.float32), np.array([False, True, True, True]), {"method": "toy"})
    graph = build_similar_items(emb, SimilarSettings(k=10))
    assert graph.top_k == 2
    ids, _ = _run(graph.model, [1])
    assert sorted(ids[0].tolist()) == [2, 3]
    with pytest.raises(ValueError, match="k=3 must be in 1..2"):
        exact_graph(emb.vectors, emb.known, 3)
    with pytest.raises(ValueError, match="at least 2"):
        build_similar_items(ItemEmbeddings(np.eye(2, dtype=np.float32), np.array([False, True]), {}),
                            SimilarSettings())
