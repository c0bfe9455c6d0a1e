"""The one evaluation protocol: leave-one-out by time, every item ranked, seen items masked."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pipelines.data.sequences import Sequences
from pipelines.evaluate import metrics


class Recommender(Protocol):
    name: str

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        """(len(histories), n_items + 1) scores; higher is better; column 0 is padding.

        A model with ``uses_event_kinds = True`` is also given ``kinds=`` (event kind codes aligned
        with each history; pipelines/data/sequences.py) when the data has them.
        """
        ...


def evaluate(
    model: Recommender,
    seqs: Sequences,
    *,
    split: str = "test",
    k: int = 10,
    mask_seen: bool = True,
    batch_size: int = 1024,
    max_users: int | None = None,
    slices: dict[str, np.ndarray] | None = None,
    top_lists: dict[int, np.ndarray] | None = None,
) -> dict[str, Any]:
    """HR@k, NDCG@k, MRR and catalogue coverage@k of `model` on `split`.

    `slices` (boolean masks over the evaluated users) add the same metrics per slice; a dict
    passed as `top_lists` is filled with each evaluated user's top-k (row index -> item ids).
    """
    histories, targets, rows = seqs.evaluation(split)
    kinds = seqs.evaluation_kinds(split) if getattr(model, "uses_event_kinds", False) else None
    if max_users is not None:
        histories, targets, rows = histories[:max_users], targets[:max_users], rows[:max_users]
    ranks = np.empty(len(targets), dtype=np.int64)
    recommended = np.zeros(seqs.n_items + 1, dtype=bool)
    for start in range(0, len(targets), batch_size):
        stop = start + batch_size
        batch = histories[start:stop]
        raw = model.score(batch) if kinds is None else model.score(batch, kinds=kinds[start:stop])
        scores = metrics.mask_scores(raw, batch, mask_seen)
        ranks[start:stop] = metrics.target_ranks(scores, targets[start:stop])
        best = metrics.top_k(scores, k)
        recommended[best.ravel()] = True
        if top_lists is not None:
            top_lists.update(zip(rows[start:stop].tolist(), best))
    result: dict[str, Any] = {
        f"hr_at_{k}": metrics.hit_rate(ranks, k),
        f"ndcg_at_{k}": metrics.ndcg(ranks, k),
        "mrr": metrics.mrr(ranks),
        f"coverage_at_{k}": float(recommended[1:].sum() / max(seqs.n_items, 1)),
        "n_users": float(len(targets)),
    }
    if slices:
        result["slices"] = {
            name: {f"hr_at_{k}": metrics.hit_rate(ranks[mask[: len(ranks)]], k),
                   f"ndcg_at_{k}": metrics.ndcg(ranks[mask[: len(ranks)]], k),
                   "n_users": int(mask[: len(ranks)].sum())}
            for name, mask in slices.items()
        }
    return result
