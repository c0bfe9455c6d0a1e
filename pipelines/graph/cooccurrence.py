"""Item co-occurrence graph: items near each other in a user's history are linked.

Built from training histories only, so no validation or test target leaks into embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp


def token_weights(
    user_ids: np.ndarray, histories: Sequence[np.ndarray], events: pd.DataFrame, event_weights: Mapping[str, float]
) -> list[np.ndarray]:
    """Per history token, the strongest event the user had on that item (purchase > cart > view).

    Aligned with `histories` (one array per user, same length). Event types missing from
    `event_weights` are an error, so a new event label cannot silently weigh nothing.
    """
    unknown = sorted(set(events["event_type"].unique()) - set(event_weights))
    if unknown:
        raise ValueError(f"graph.event_weights has no weight for event types {unknown}; "
                         f"add them in params.yaml (known: {sorted(event_weights)})")
    strength = events["event_type"].map(dict(event_weights)).astype(np.float64)
    best = strength.groupby([events["user_id"].to_numpy(), events["item_id"].to_numpy()]).max()
    lookup = pd.Series(best.to_numpy(), index=best.index)
    users = np.repeat(np.asarray(user_ids), [len(h) for h in histories])
    items = np.concatenate(histories) if len(histories) else np.zeros(0, dtype=np.int64)
    flat = lookup.reindex(pd.MultiIndex.from_arrays([users, items])).to_numpy(dtype=np.float64)
    flat = np.nan_to_num(flat, nan=1.0)
    return np.split(flat, np.cumsum([len(h) for h in histories])[:-1]) if len(histories) else []


def cooccurrence_graph(
    histories: Sequence[np.ndarray], n_items: int, window: int, weights: Sequence[np.ndarray] | None = None
) -> sp.csr_matrix:
    """Symmetric weighted adjacency (n_items+1 square, row 0 = padding, empty).

    Each pair of items at distance d <= window in a history adds weight 1/d, times the mean of
    the two tokens' event weights when `weights` (from `token_weights`) is given.
    """
    if weights is not None and len(weights) != len(histories):
        raise ValueError(f"weights has {len(weights)} rows for {len(histories)} histories")
    rows, cols, edge_w = [], [], []
    for d in range(1, window + 1):
        for u, seq in enumerate(histories):
            if len(seq) > d:
                rows.append(seq[:-d])
                cols.append(seq[d:])
                scale = 1.0 / d if weights is None else (weights[u][:-d] + weights[u][d:]) / (2.0 * d)
                edge_w.append(np.broadcast_to(scale, (len(seq) - d,)))
    if not rows:
        return sp.csr_matrix((n_items + 1, n_items + 1), dtype=np.float64)
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    w = np.concatenate(edge_w).astype(np.float64)
    keep = r != c
    r, c, w = r[keep], c[keep], w[keep]
    graph = sp.coo_matrix(
        (np.r_[w, w], (np.r_[r, c], np.r_[c, r])), shape=(n_items + 1, n_items + 1)
    ).tocsr()
    graph.sum_duplicates()
    graph.sort_indices()
    return graph
