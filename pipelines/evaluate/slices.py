"""Slices of the evaluated users that tell models apart where averages hide it.

- cold_start: the target item had at most `cold_max_count` interactions in what models learn from
  (new products);
- long_tail: the target is outside the most popular `head_share` of the catalogue;
- users_1_4 / users_5_plus: how much history the user has (1mg split its users this way).
"""

from __future__ import annotations

import numpy as np

from pipelines.data.sequences import Sequences


def standard_slices(seqs: Sequences, split: str = "test", cold_max_count: int = 5,
                    head_share: float = 0.2) -> dict[str, np.ndarray]:
    """Boolean masks over the users `seqs.evaluation(split)` returns, in the same order."""
    histories, targets, _ = seqs.evaluation(split)
    cut = 1 if split == "test" else 2
    counts = np.zeros(seqs.n_items + 1, dtype=np.int64)
    for items in seqs.items:
        np.add.at(counts, items[:-cut] if len(items) > cut else items[:0], 1)
    order = np.argsort(-counts[1:], kind="stable") + 1
    head = np.zeros(seqs.n_items + 1, dtype=bool)
    head[order[: max(1, round(head_share * seqs.n_items))]] = True
    lengths = np.array([len(h) for h in histories])
    return {
        "cold_start": counts[targets] <= cold_max_count,
        "long_tail": ~head[targets],
        "users_1_4": lengths <= 4,
        "users_5_plus": lengths >= 5,
    }
