"""The one evaluation protocol: leave-one-out by time, every item ranked, seen items masked.

Every consumer ranks through `evaluate`: the `evaluate` stage (the leaderboard), GPT4Rec's early
stopping (split="valid"), the embeddings' similar-products evaluation (embed/evaluate.py) and the
promotion gate, which scores exported ONNX graphs through a `TopKRanker`. Slices such as
cold-start come from pipelines/evaluate/slices.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TopKRanker:
    """A model that answers only its best `top_k` item ids per history, best first.

    That is an exported ONNX graph: masking and top-k run inside it, so the protocol cannot mask or
    rank by itself. Ranks stay exact inside the list; a target outside it counts as a miss (rank
    `top_k`), which is exact for HR@k and NDCG@k (k <= top_k) but not for MRR, so MRR is not
    reported for such a model. `recommend(histories, kinds)` gets kinds (or None) like
    `Recommender.score` does when `uses_event_kinds`.
    """

    name: str
    recommend: Callable[[list[np.ndarray], list[np.ndarray] | None], np.ndarray]
    top_k: int
    uses_event_kinds: bool = False


def _rank_batch(model: Recommender | TopKRanker, batch: list[np.ndarray], kinds: list[np.ndarray] | None,
                targets: np.ndarray, k: int, mask_seen: bool) -> tuple[np.ndarray, np.ndarray]:
    """(top-k ids, 0-based target ranks) of one batch of histories."""
    if isinstance(model, TopKRanker):
        best = np.asarray(model.recommend(batch, kinds))[:, :k]
        return best, metrics.ranks_in_top_k(best, targets)
    raw = model.score(batch) if kinds is None else model.score(batch, kinds=kinds)
    scores = metrics.mask_scores(raw, batch, mask_seen)
    return metrics.top_k(scores, k), metrics.target_ranks(scores, targets)


def user_sample(n_users: int, max_users: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted indices of a fixed uniform sample of `max_users` of `n_users` users, or None for all of them.

    Why: ranking every item for every user grows with users x catalogue; past a few tens of thousands
    of users a fixed sample gives the same figures to a few thousandths (the standard error of a hit
    rate h over n users is sqrt(h(1-h)/n)) at a cost that stops growing with the user base. The sample
    depends only on the user count and the seed, so every model, epoch and gate run ranks the same users.
    """
    if not max_users or n_users <= max_users:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_users, size=max_users, replace=False))


def evaluate(
    model: Recommender | TopKRanker,
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

    `max_users` (0 or None: all) ranks a fixed sample of that many users instead (`user_sample`);
    `slices` (boolean masks over the split's users) add HR@k, NDCG@k and the user count per
    slice; a dict passed as `top_lists` is filled with each evaluated user's top-k (row index ->
    item ids). A `TopKRanker` is ranked on its own lists (no MRR; `mask_seen` is the graph's).
    """
    top_only = isinstance(model, TopKRanker)
    if top_only and k > model.top_k:
        raise ValueError(f"k={k} is more than the {model.top_k} ids {model.name} returns")
    histories, targets, rows = seqs.evaluation(split)
    kinds = seqs.evaluation_kinds(split) if getattr(model, "uses_event_kinds", False) else None
    chosen = user_sample(len(targets), max_users)
    if chosen is not None:
        histories, targets, rows = [histories[i] for i in chosen], targets[chosen], rows[chosen]
        kinds = [kinds[i] for i in chosen] if kinds is not None else None
        slices = {name: mask[chosen] for name, mask in slices.items()} if slices else slices
    ranks = np.empty(len(targets), dtype=np.int64)
    recommended = np.zeros(seqs.n_items + 1, dtype=bool)
    for start in range(0, len(targets), batch_size):
        stop = start + batch_size
        batch_kinds = kinds[start:stop] if kinds is not None else None
        best, ranks[start:stop] = _rank_batch(model, histories[start:stop], batch_kinds, targets[start:stop], k,
                                              mask_seen)
        recommended[best.ravel()] = True
        if top_lists is not None:
            top_lists.update(zip(rows[start:stop].tolist(), best))
    result: dict[str, Any] = {f"hr_at_{k}": metrics.hit_rate(ranks, k), f"ndcg_at_{k}": metrics.ndcg(ranks, k)}
    if not top_only:
        result["mrr"] = metrics.mrr(ranks)
    result[f"coverage_at_{k}"] = float(recommended[1:].sum() / max(seqs.n_items, 1))
    result["n_users"] = float(len(targets))
    if slices:
        result["slices"] = {
            name: {f"hr_at_{k}": metrics.hit_rate(ranks[mask], k),
                   f"ndcg_at_{k}": metrics.ndcg(ranks[mask], k),
                   "n_users": int(mask.sum())}
            for name, mask in slices.items()
        }
    return result
