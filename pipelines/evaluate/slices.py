"""Slices of the evaluated users that tell models apart where averages hide it, and the one
definition of a cold-start item.

A cold-start item is a new product with no or few interactions: at most
`evaluate.cold_max_interactions` (params.yaml) interactions in the training histories every model
learns from (`Sequences.train()`). The leaderboard's `cold_start` slice, the promotion gate's
`cold_start_hr_at_k` guard and the embeddings' `cold_*` metrics all read `cold_start_items`.
"Unseen" items (no training interaction at all) are a narrower idea kept for the embeddings only:
they tell whether a method can embed a product before anyone touched it.

- cold_start: the target is a cold-start item;
- long_tail: the target is outside the most popular `head_share` of the catalogue;
- users_1_4 / users_5_plus: how much history the user has (1mg split its users this way).
"""

from __future__ import annotations

import numpy as np

from pipelines.data.sequences import Sequences


def training_interactions(seqs: Sequences) -> np.ndarray:
    """Interactions per item id 0..n_items in the training histories (what every model learns from)."""
    train = seqs.train()
    flat = np.concatenate(train) if train else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=seqs.n_items + 1)[: seqs.n_items + 1]


def cold_start_items(seqs: Sequences, cold_max_interactions: int) -> np.ndarray:
    """Bool over item ids 0..n_items: at most `cold_max_interactions` training interactions (0 = padding, never)."""
    cold = training_interactions(seqs) <= cold_max_interactions
    cold[0] = False
    return cold


def unseen_items(seqs: Sequences) -> np.ndarray:
    """Bool over item ids 0..n_items: no training interaction at all (0 = padding, never)."""
    return cold_start_items(seqs, 0)


def cold_start_users(seqs: Sequences, split: str, cold_max_interactions: int) -> np.ndarray:
    """Bool over the users `seqs.evaluation(split)` returns: is their target a cold-start item?"""
    _, targets, _ = seqs.evaluation(split)
    return cold_start_items(seqs, cold_max_interactions)[targets]


def standard_slices(seqs: Sequences, split: str = "test", *, cold_max_interactions: int,
                    head_share: float = 0.2) -> dict[str, np.ndarray]:
    """Boolean masks over the users `seqs.evaluation(split)` returns, in the same order."""
    histories, targets, _ = seqs.evaluation(split)
    counts = training_interactions(seqs)
    order = np.argsort(-counts[1:], kind="stable") + 1
    head = np.zeros(seqs.n_items + 1, dtype=bool)
    head[order[: max(1, round(head_share * seqs.n_items))]] = True
    lengths = np.array([len(h) for h in histories])
    return {
        "cold_start": cold_start_users(seqs, split, cold_max_interactions),
        "long_tail": ~head[targets],
        "users_1_4": lengths <= 4,
        "users_5_plus": lengths >= 5,
    }
