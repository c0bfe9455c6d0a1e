"""DeepWalk random walks over the weighted item graph: alias sampling, many walkers in flight.

Why this shape:
- **Alias tables** (Walker/Vose, one per CSR row) make every transition O(1): one uniform draw
  picks a slot of the row and either keeps it or jumps to its alias, which is an edge of the
  same row by construction. So a walker can never step off its row, whatever the rounding of
  float32 weights (a cumulative-sum + search sampler can, when a row's float32 sum is below 1).
- **Many walkers in flight**: one walker at a time is bound by memory latency (each step is a
  dependent random read). Walkers are processed in blocks, step-major inside a block, so the
  CPU overlaps the independent reads of hundreds of walkers; blocks run in parallel threads.
- **Deterministic**: every walker has its own counter-based random stream (splitmix64 keyed by
  the seed and the walker's index), so the walks are identical for any thread count.
- **Memory grows with edges**: 12 bytes per directed edge (int32 neighbour, float32 keep
  probability, int32 alias) plus the walks themselves (int32, walkers x length).
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

BLOCK = 512  # walkers stepped together; their positions stay in L1, their walks (block x length) in L2


@numba.njit(cache=True, inline="always")
def _splitmix64(state: np.uint64) -> tuple[np.uint64, np.uint64]:
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@numba.njit(cache=True, parallel=True)
def _build_alias(indptr: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias method per row; keep probability in float32, alias as an offset in the row."""
    n_edges = len(weights)
    prob = np.ones(n_edges, dtype=np.float32)
    alias = np.zeros(n_edges, dtype=np.int32)
    n_rows = len(indptr) - 1
    for row in numba.prange(n_rows):
        lo, hi = indptr[row], indptr[row + 1]
        deg = hi - lo
        if deg == 0:
            continue
        total = 0.0
        for e in range(lo, hi):
            total += weights[e]
        scaled = np.empty(deg, dtype=np.float64)
        small = np.empty(deg, dtype=np.int64)
        large = np.empty(deg, dtype=np.int64)
        n_small = 0
        n_large = 0
        for j in range(deg):
            scaled[j] = weights[lo + j] * deg / total if total > 0 else 1.0
            if scaled[j] < 1.0:
                small[n_small] = j
                n_small += 1
            else:
                large[n_large] = j
                n_large += 1
        while n_small > 0 and n_large > 0:
            n_small -= 1
            s = small[n_small]
            g = large[n_large - 1]
            prob[lo + s] = scaled[s]
            alias[lo + s] = g
            scaled[g] = (scaled[g] + scaled[s]) - 1.0
            if scaled[g] < 1.0:
                n_large -= 1
                small[n_small] = g
                n_small += 1
        for j in range(n_large):
            prob[lo + large[j]] = 1.0
            alias[lo + large[j]] = large[j]
        for j in range(n_small):  # only left by rounding: they keep themselves
            prob[lo + small[j]] = 1.0
            alias[lo + small[j]] = small[j]
    return prob, alias


@numba.njit(cache=True, parallel=True)
def _walk(indptr: np.ndarray, indices: np.ndarray, prob: np.ndarray, alias: np.ndarray,
          starts: np.ndarray, length: int, seed: np.uint64) -> np.ndarray:
    n = len(starts)
    walks = np.empty((n, length), dtype=np.int32)
    n_blocks = (n + BLOCK - 1) // BLOCK
    inv = 1.0 / 9007199254740992.0  # 2**-53
    for b in numba.prange(n_blocks):
        first = b * BLOCK
        last = min(first + BLOCK, n)
        size = last - first
        current = np.empty(size, dtype=np.int64)
        rng = np.empty(size, dtype=np.uint64)
        for i in range(size):
            current[i] = starts[first + i]
            walks[first + i, 0] = current[i]
            rng[i] = seed ^ (np.uint64(first + i) * np.uint64(0xD1B54A32D192ED03))
        for step in range(1, length):
            for i in range(size):  # independent walkers: their memory reads overlap
                node = current[i]
                lo = indptr[node]
                deg = indptr[node + 1] - lo
                if deg > 0:
                    state, r = _splitmix64(rng[i])
                    rng[i] = state
                    u = np.float64(r >> np.uint64(11)) * inv * deg
                    slot = min(np.int64(u), deg - 1)
                    if u - slot >= prob[lo + slot]:
                        slot = alias[lo + slot]
                    node = indices[lo + slot]
                    current[i] = node
                walks[first + i, step] = node
    return walks


class WalkSampler:
    """Weighted first-order random walks on a CSR graph (alias tables built once)."""

    def __init__(self, graph: sp.csr_matrix) -> None:
        if graph.shape[0] != graph.shape[1]:
            raise ValueError(f"the walk graph must be square, got shape {graph.shape}")
        graph = graph.tocsr()
        if graph.nnz and (graph.data < 0).any():
            raise ValueError("edge weights must be non-negative; found negative weights in the graph")
        self.indptr = graph.indptr.astype(np.int64)
        self.indices = graph.indices.astype(np.int32)
        weights = graph.data.astype(np.float64)
        self.degree = np.diff(self.indptr)
        # Per-row sums; not np.add.reduceat, which fails when the last rows have no edges (a catalogue whose
        # newest products were never bought together with anything).
        self.strength = np.bincount(np.repeat(np.arange(len(self.degree)), self.degree), weights=weights,
                                    minlength=len(self.degree))
        self.prob, self.alias = _build_alias(self.indptr, weights)

    @property
    def nbytes(self) -> int:
        """Memory of the sampler's tables: grows with the edges only."""
        return sum(a.nbytes for a in (self.indptr, self.indices, self.prob, self.alias))

    @property
    def nodes(self) -> np.ndarray:
        """Nodes with at least one edge (the only valid walk starts)."""
        return np.flatnonzero(self.degree > 0)

    def start_nodes(self, walks_per_node: int, popular_share: float, rng: np.random.Generator) -> np.ndarray:
        """Balanced starts: a share drawn by weighted degree (popular items), the rest uniform."""
        nodes = self.nodes
        n = walks_per_node * len(nodes)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        n_popular = round(popular_share * n)
        p = self.strength[nodes] / self.strength[nodes].sum()
        popular = rng.choice(nodes, size=n_popular, p=p)
        uniform = np.tile(nodes, walks_per_node)[: n - n_popular]
        starts = np.concatenate([popular, uniform])
        rng.shuffle(starts)
        return starts

    def walk(self, starts: np.ndarray, length: int, rng: np.random.Generator | int) -> np.ndarray:
        """(len(starts), length) int32 walks; a walker on a node with no edges stays there.

        `rng` seeds the walkers' streams (a Generator draws one seed from it, an int is the seed).
        """
        if length < 1:
            raise ValueError(f"walk length must be at least 1, got {length}")
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        if len(starts) and (starts.min() < 0 or starts.max() >= len(self.degree)):
            raise ValueError(f"walk starts must be node ids in [0, {len(self.degree)}), "
                             f"got [{starts.min()}, {starts.max()}]")
        seed = int(rng.integers(0, 2**63)) if isinstance(rng, np.random.Generator) else int(rng)
        return _walk(self.indptr, self.indices, self.prob, self.alias, starts, length, np.uint64(seed))


def invalid_transitions(graph: sp.csr_matrix, walks: np.ndarray) -> int:
    """Steps between two nodes that share no edge (a walker stuck on an isolated node is valid).

    Each step becomes the key src * n + dst and is looked up in the sorted keys of the edges.
    """
    graph = graph.tocsr().copy()
    graph.sort_indices()
    n = np.int64(graph.shape[0])
    rows = np.repeat(np.arange(graph.shape[0], dtype=np.int64), np.diff(graph.indptr))
    edge_keys = rows * n + graph.indices.astype(np.int64)
    edge_keys = edge_keys[graph.data > 0]
    total = 0
    for lo in range(0, len(walks), 200_000):
        block = walks[lo:lo + 200_000].astype(np.int64)
        src, dst = block[:, :-1].ravel(), block[:, 1:].ravel()
        stuck = (src == dst) & (np.diff(graph.indptr)[src] == 0)
        keys = (src * n + dst)[~stuck]
        pos = np.minimum(np.searchsorted(edge_keys, keys), max(len(edge_keys) - 1, 0))
        found = edge_keys[pos] == keys if len(edge_keys) else np.zeros(len(keys), dtype=bool)
        total += int((~found).sum())
    return total
