"""Item co-occurrence graph: items near each other in a user's history are linked.

Built from training histories only, so no validation or test target leaks into embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def cooccurrence_graph(histories: Sequence[np.ndarray], n_items: int, window: int) -> sp.csr_matrix:
    """Symmetric weighted adjacency (n_items+1 square, row 0 = padding, empty).

    Each pair of items at distance d <= window in a history adds weight 1/d.
    """
    rows, cols, weights = [], [], []
    for d in range(1, window + 1):
        for seq in histories:
            if len(seq) > d:
                rows.append(seq[:-d])
                cols.append(seq[d:])
                weights.append(np.full(len(seq) - d, 1.0 / d))
    if not rows:
        return sp.csr_matrix((n_items + 1, n_items + 1), dtype=np.float64)
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    w = np.concatenate(weights)
    keep = r != c
    r, c, w = r[keep], c[keep], w[keep]
    graph = sp.coo_matrix(
        (np.r_[w, w], (np.r_[r, c], np.r_[c, r])), shape=(n_items + 1, n_items + 1)
    ).tocsr()
    graph.sum_duplicates()
    graph.sort_indices()
    return graph
