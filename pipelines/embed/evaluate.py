"""Similar-products evaluation: one protocol for every embedding method.

Given a user's previous item, rank the next one by cosine similarity against all items (the
user's seen items masked, as in the main protocol); HR@k and NDCG@k over all evaluated users, and
on the cold-start slice: users whose target never appears in any training history. An item a
method has no vector for can never be recommended (its score is -inf), so a method that cannot
embed cold items scores 0 there, honestly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from pipelines.data.sequences import Sequences
from pipelines.evaluate import metrics

NO_VECTOR = -np.inf


def normalise(vectors: np.ndarray | sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
    """Rows scaled to unit length (zero rows stay zero), so a dot product is a cosine."""
    if sp.issparse(vectors):
        norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
        return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class CosineSimilarity:
    """Scores every item by its cosine to the last item of each history (a Recommender)."""

    def __init__(self, name: str, vectors: np.ndarray | sp.csr_matrix, known: np.ndarray) -> None:
        self.name = name
        self.unit = normalise(vectors)
        self.known = np.asarray(known, dtype=bool)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        last = np.array([h[-1] if len(h) else 0 for h in histories], dtype=np.int64)
        scores = self.unit[last] @ self.unit.T
        scores = scores.toarray() if sp.issparse(scores) else np.asarray(scores)
        scores = scores.astype(np.float32)
        scores[:, ~self.known] = NO_VECTOR
        return scores


class Popularity:
    """Reference: training-history counts, the same for everyone (cold items score 0)."""

    name = "popularity"

    def __init__(self, train: Sequence[np.ndarray], n_items: int) -> None:
        flat = np.concatenate(train) if len(train) else np.zeros(0, dtype=np.int64)
        self.counts = np.bincount(flat, minlength=n_items + 1).astype(np.float32)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


def cold_targets(seqs: Sequences, targets: np.ndarray) -> np.ndarray:
    """Which targets never appear in any training history (the cold-start slice)."""
    train = seqs.train()
    seen = np.zeros(seqs.n_items + 1, dtype=bool)
    if train:
        seen[np.concatenate(train)] = True
    return ~seen[targets]


def evaluate_similarity(
    model, seqs: Sequences, *, split: str = "test", k: int = 10, mask_seen: bool = True, batch_size: int = 1024,
    max_users: int | None = None,
) -> dict[str, float]:
    """hr/ndcg@k overall and on the cold-start slice (cold_hr/cold_ndcg), plus MRR and slice sizes."""
    histories, targets, _ = seqs.evaluation(split)
    if max_users is not None:
        histories, targets = histories[:max_users], targets[:max_users]
    ranks = np.empty(len(targets), dtype=np.int64)
    for start in range(0, len(targets), batch_size):
        batch = histories[start:start + batch_size]
        scores = metrics.mask_scores(model.score(batch), batch, mask_seen)
        ranks[start:start + batch_size] = metrics.target_ranks(scores, targets[start:start + batch_size])
    cold = cold_targets(seqs, targets)
    return {
        f"hr_at_{k}": metrics.hit_rate(ranks, k),
        f"ndcg_at_{k}": metrics.ndcg(ranks, k),
        "mrr": metrics.mrr(ranks),
        f"cold_hr_at_{k}": metrics.hit_rate(ranks[cold], k),
        f"cold_ndcg_at_{k}": metrics.ndcg(ranks[cold], k),
        "n_users": float(len(targets)),
        "n_cold_users": float(cold.sum()),
    }
