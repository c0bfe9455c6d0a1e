"""The `similar_items` model as an ONNX graph: item id in, its top-k most similar products out.

Two graphs with the same contract (input ``item_id`` int64 [batch, 1]; outputs ``item_ids`` int64
[batch, k] and ``scores`` float32 [batch, k], best first):

- ``exact``: the unit-normalised embedding table is an initializer; the graph gathers the query row,
  multiplies it with the whole table (one Gemm), masks the item itself and items without a vector,
  and takes the top-k. Plain ONNX ops (Gather, Gemm, Equal, Where, TopK), so the same file runs
  on ONNX Runtime on CPU here and under TensorRT on GPU nodes.
- ``table``: a precomputed [n_items + 1, k] neighbour table (exact or faiss HNSW, as in the
  similar_products stage) gathered by id: for sparse tables (TF-IDF) or catalogues whose dense
  table would be too large to multiply per request.

Item ids are row numbers (row 0 is padding); ids without a vector are rejected by the serving
backend (pipelines/serve/backend/similar_items.py) before they reach the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper

from pipelines.core.config import SimilarSettings
from pipelines.embed.evaluate import normalise
from pipelines.embed.prod2vec import ItemEmbeddings

INPUT_ITEM = "item_id"  # int64 [batch, 1]
OUTPUT_IDS = "item_ids"
OUTPUT_SCORES = "scores"
MASKED_SCORE = -1.0e9
OPSET = 18
#: Above this many bytes of dense float32 table the graph holds a neighbour table instead.
MAX_EXACT_TABLE_BYTES = 256 << 20


@dataclass(frozen=True)
class SimilarItemsGraph:
    """An ONNX model for `similar_items` and the facts the serving backend and config need."""

    model: onnx.ModelProto
    known: np.ndarray  # bool [n_items + 1]: items that have a vector (valid queries)
    top_k: int
    mode: str  # "exact" | "table"

    @property
    def n_items(self) -> int:
        return len(self.known) - 1


def _io(n_out_k: int) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    inputs = [helper.make_tensor_value_info(INPUT_ITEM, TensorProto.INT64, ["batch", 1])]
    outputs = [
        helper.make_tensor_value_info(OUTPUT_IDS, TensorProto.INT64, ["batch", n_out_k]),
        helper.make_tensor_value_info(OUTPUT_SCORES, TensorProto.FLOAT, ["batch", n_out_k]),
    ]
    return inputs, outputs


def _finish(graph: onnx.GraphProto, meta: dict[str, object]) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rxrec")
    model.ir_version = min(model.ir_version, 9)  # what the serving venv's onnxruntime reads
    helper.set_model_props(model, {key: str(value) for key, value in meta.items()})
    onnx.checker.check_model(model)
    return model


def exact_graph(vectors: np.ndarray, known: np.ndarray, k: int) -> onnx.ModelProto:
    """Cosine top-k over a dense table inside the graph; `k` must leave room after masking self."""
    known = np.asarray(known, dtype=bool).copy()
    known[0] = False
    unit = normalise(np.asarray(vectors, dtype=np.float32))
    unit[~known] = 0.0
    n_rows = unit.shape[0]
    if not 1 <= k <= int(known.sum()) - 1:
        raise ValueError(f"k={k} must be in 1..{int(known.sum()) - 1} (items with a vector, minus the query)")
    bias = np.where(known, 0.0, MASKED_SCORE).astype(np.float32)
    inits = [
        numpy_helper.from_array(unit, "table"),
        numpy_helper.from_array(bias, "no_vector_bias"),
        numpy_helper.from_array(np.arange(n_rows, dtype=np.int64).reshape(1, n_rows), "row_ids"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
        numpy_helper.from_array(np.array(MASKED_SCORE, dtype=np.float32), "masked"),
        numpy_helper.from_array(np.array([k], dtype=np.int64), "k"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", INPUT_ITEM], ["query3"], axis=0),  # [B, 1, d]
        helper.make_node("Squeeze", ["query3", "axis_1"], ["query"]),  # [B, d]
        helper.make_node("Gemm", ["query", "table"], ["cosine"], transB=1),  # [B, n + 1]
        helper.make_node("Add", ["cosine", "no_vector_bias"], ["cosine_known"]),
        helper.make_node("Equal", ["row_ids", INPUT_ITEM], ["is_self"]),  # [B, n + 1]
        helper.make_node("Where", ["is_self", "masked", "cosine_known"], ["candidates"]),
        helper.make_node("TopK", ["candidates", "k"], [OUTPUT_SCORES, OUTPUT_IDS], axis=1, largest=1, sorted=1),
    ]
    inputs, outputs = _io(k)
    graph = helper.make_graph(nodes, "similar_items_exact", inputs, outputs, initializer=inits)
    return _finish(graph, {"n_items": n_rows - 1, "top_k": k, "mode": "exact"})


def table_graph(neighbour_ids: np.ndarray, neighbour_scores: np.ndarray) -> onnx.ModelProto:
    """Gather a precomputed [n_items + 1, k] neighbour table by item id (-1 ids pad short rows)."""
    ids = np.asarray(neighbour_ids, dtype=np.int64)
    scores = np.nan_to_num(np.asarray(neighbour_scores, dtype=np.float32), nan=MASKED_SCORE)
    if ids.ndim != 2 or ids.shape != scores.shape:
        raise ValueError(f"neighbour ids {ids.shape} and scores {scores.shape} must be the same 2-D shape")
    k = ids.shape[1]
    inits = [
        numpy_helper.from_array(ids, "neighbour_ids"),
        numpy_helper.from_array(scores, "neighbour_scores"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
    ]
    nodes = [
        helper.make_node("Gather", ["neighbour_ids", INPUT_ITEM], ["ids3"], axis=0),
        helper.make_node("Squeeze", ["ids3", "axis_1"], [OUTPUT_IDS]),
        helper.make_node("Gather", ["neighbour_scores", INPUT_ITEM], ["scores3"], axis=0),
        helper.make_node("Squeeze", ["scores3", "axis_1"], [OUTPUT_SCORES]),
    ]
    inputs, outputs = _io(k)
    graph = helper.make_graph(nodes, "similar_items_table", inputs, outputs, initializer=inits)
    return _finish(graph, {"n_items": ids.shape[0] - 1, "top_k": k, "mode": "table"})


def build_similar_items(
    emb: ItemEmbeddings, s: SimilarSettings, *, max_exact_bytes: int = MAX_EXACT_TABLE_BYTES
) -> SimilarItemsGraph:
    """The graph for an embedding table: exact when dense and small enough, else a neighbour table.

    k is `similar.k`, lowered when the table has fewer items with a vector (a tiny catalogue),
    so every answer holds k real items.
    """
    known = np.asarray(emb.known, dtype=bool).copy()
    known[0] = False
    n_known = int(known.sum())
    if n_known < 2:
        raise ValueError(
            f"embedding table {emb.info.get('method', '?')!r} has {n_known} item(s) with a vector: "
            "similar_items needs at least 2"
        )
    k = min(s.k, n_known - 1)
    dense_bytes = emb.vectors.shape[0] * emb.vectors.shape[1] * 4
    if not sp.issparse(emb.vectors) and dense_bytes <= max_exact_bytes and n_known <= s.exact_max_items:
        return _named(SimilarItemsGraph(exact_graph(emb.vectors, known, k), known, k, "exact"), emb)

    from pipelines.embed.similar import SimilarProducts

    index = SimilarProducts(emb, s)
    ids = np.full((len(known), k), -1, dtype=np.int64)
    scores = np.full((len(known), k), MASKED_SCORE, dtype=np.float32)
    items = np.flatnonzero(known)
    for lo in range(0, len(items), 2048):
        chunk = items[lo:lo + 2048]
        ids[chunk], scores[chunk] = index.query(chunk, k)
    return _named(SimilarItemsGraph(table_graph(ids, scores), known, k, "table"), emb)


def _named(graph: SimilarItemsGraph, emb: ItemEmbeddings) -> SimilarItemsGraph:
    """Record which embedding table the graph was built from (the backend logs it, errors name it)."""
    graph.model.metadata_props.add(key="method", value=str(emb.info.get("method", "?")))
    return graph
