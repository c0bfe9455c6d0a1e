"""Similar products: top-k by cosine similarity of an embedding table.

Exact (one matrix product) while the catalogue is small; above `exact_max_items` an approximate
faiss HNSW index over the unit vectors, since an exact scan of millions of rows per query is
too slow to serve. Items without a vector are never returned.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pipelines.core.config import SimilarSettings
from pipelines.embed.evaluate import normalise
from pipelines.embed.prod2vec import ItemEmbeddings


class SimilarProducts:
    """Top-k neighbours of any item id by cosine similarity."""

    def __init__(self, emb: ItemEmbeddings, s: SimilarSettings) -> None:
        self.known = np.asarray(emb.known, dtype=bool)
        self.ids = np.flatnonzero(self.known)  # index row -> item id
        if len(self.ids) == 0:
            raise ValueError(f"embedding table {emb.info.get('method', '?')!r} has no item with a vector")
        self.unit = normalise(emb.vectors)
        self.approximate = len(self.ids) > s.exact_max_items
        self.index = None
        if self.approximate:
            import faiss

            dense = self.unit[self.ids]
            dense = np.ascontiguousarray(dense.toarray() if sp.issparse(dense) else dense, dtype=np.float32)
            self.index = faiss.IndexHNSWFlat(dense.shape[1], s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = s.hnsw_ef_search
            self.index.add(dense)

    def query(self, item_ids: np.ndarray | list[int], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosines), each (len(item_ids), k), best first; the item itself excluded; -1 pads."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if len(item_ids) and (item_ids.min() < 1 or item_ids.max() >= len(self.known)):
            raise ValueError(f"item ids must be in 1..{len(self.known) - 1}, got {item_ids.min()}..{item_ids.max()}")
        missing = item_ids[~self.known[item_ids]]
        if len(missing):
            raise KeyError(f"items {missing[:10].tolist()} have no vector in this table (no interactions, no meta)")
        q = self.unit[item_ids]
        q = np.ascontiguousarray(q.toarray() if sp.issparse(q) else q, dtype=np.float32)
        if self.index is not None:
            scores, rows = self.index.search(q, k + 1)
            ids = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
        else:
            sims = self.unit[self.ids] @ q.T
            sims = (sims.toarray() if sp.issparse(sims) else np.asarray(sims)).T.astype(np.float32)
            top = min(k + 1, sims.shape[1])
            part = np.argpartition(-sims, top - 1, axis=1)[:, :top]
            order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
            rows = np.take_along_axis(part, order, axis=1)
            ids, scores = self.ids[rows], np.take_along_axis(sims, rows, axis=1)
        out_ids = np.full((len(item_ids), k), -1, dtype=np.int64)
        out_scores = np.full((len(item_ids), k), np.nan, dtype=np.float32)
        for r, item in enumerate(item_ids):
            keep = (ids[r] != item) & (ids[r] >= 0)
            found = ids[r][keep][:k]
            out_ids[r, :len(found)] = found
            out_scores[r, :len(found)] = scores[r][keep][:k]
        return out_ids, out_scores
