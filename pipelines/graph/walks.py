"""DeepWalk random walks over the weighted item graph, all walkers stepped at once.

Why vectorised: one walker at a time is bound by memory latency; stepping every walker in one
numpy call keeps many memory reads in flight. A transition is a single `searchsorted` in a
global cumulative-weight array where row r's weights span (r, r+1], so rows never mix and the
drawn edge is clipped into its row (no step off a row when cumulative weights round below 1).
Memory grows with the edges (one float64 and one int per edge) plus the walks themselves.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class WalkSampler:
    """Weighted first-order random walks on a CSR graph."""

    def __init__(self, graph: sp.csr_matrix) -> None:
        self.indptr = graph.indptr.astype(np.int64)
        self.indices = graph.indices.astype(np.int64)
        degree = np.diff(self.indptr)
        weights = graph.data.astype(np.float64)
        row_sums = np.add.reduceat(weights, self.indptr[:-1][degree > 0]) if len(weights) else np.array([])
        row_of_edge = np.repeat(np.arange(len(degree)), degree)
        totals = np.zeros(len(degree))
        totals[degree > 0] = row_sums
        within = np.cumsum(weights) - np.repeat(np.r_[0, np.cumsum(totals)[:-1]], degree)
        self.cum = row_of_edge + within / np.maximum(totals[row_of_edge], 1e-300)
        self.degree = degree
        self.strength = totals

    @property
    def nodes(self) -> np.ndarray:
        """Nodes with at least one edge (the only valid walk starts)."""
        return np.flatnonzero(self.degree > 0)

    def start_nodes(self, walks_per_node: int, popular_share: float, rng: np.random.Generator) -> np.ndarray:
        """Balanced starts: a share drawn by weighted degree (popular items), the rest uniform."""
        nodes = self.nodes
        n = walks_per_node * len(nodes)
        n_popular = int(round(popular_share * n))
        p = self.strength[nodes] / self.strength[nodes].sum()
        popular = rng.choice(nodes, size=n_popular, p=p)
        uniform = np.tile(nodes, walks_per_node)[: n - n_popular]
        starts = np.concatenate([popular, uniform])
        rng.shuffle(starts)
        return starts

    def walk(self, starts: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
        """(len(starts), length) int32 walks; a walker on a node with no edges stays there."""
        walks = np.empty((len(starts), length), dtype=np.int32)
        current = starts.astype(np.int64)
        walks[:, 0] = current
        lo_all, hi_all = self.indptr[:-1], self.indptr[1:]
        for step in range(1, length):
            lo, hi = lo_all[current], hi_all[current]
            edge = np.searchsorted(self.cum, current + rng.random(len(current)), side="right")
            edge = np.minimum(np.maximum(edge, lo), hi - 1)
            moved = hi > lo
            current = np.where(moved, self.indices[np.where(moved, edge, 0)], current)
            walks[:, step] = current
        return walks
