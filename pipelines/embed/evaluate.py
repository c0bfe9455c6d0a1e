"""Similar-products evaluation: every embedding method on the one evaluation protocol.

Given a user's previous item, rank the next one by cosine similarity against all items (the
user's seen items masked), through pipelines/evaluate/protocol.py; HR@k and NDCG@k over all
evaluated users, on the cold-start slice (the one definition, pipelines/evaluate/slices.py) and on
the unseen slice: users whose target never appears in any training history. An item a method has
no vector for can never be recommended (its score is -inf), so a method that cannot embed unseen
items scores 0 there, honestly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from pipelines.data.sequences import Sequences
from pipelines.evaluate.protocol import Recommender, evaluate
from pipelines.evaluate.slices import cold_start_items, unseen_items

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


def evaluate_similarity(
    model: Recommender, seqs: Sequences, *, cold_max_interactions: int, split: str = "test", k: int = 10,
    mask_seen: bool = True, batch_size: int = 1024, max_users: int | None = None,
) -> dict[str, float]:
    """The protocol's hr/ndcg@k, MRR and coverage, plus warm_*/cold_*/unseen_* hr/ndcg@k and their user counts."""
    _, targets, _ = seqs.evaluation(split)
    cold = cold_start_items(seqs, cold_max_interactions)[targets]
    slices = {"warm": ~cold, "cold": cold, "unseen": unseen_items(seqs)[targets]}
    result = evaluate(model, seqs, split=split, k=k, mask_seen=mask_seen, batch_size=batch_size,
                      max_users=max_users, slices=slices)
    for name, values in result.pop("slices").items():
        result.update({f"{name}_{key}": value for key, value in values.items() if key != "n_users"})
        result[f"n_{name}_users"] = float(values["n_users"])
    return result


def similarity_slices(cold_max_interactions: int) -> dict[str, str]:
    """What the cold_* and unseen_* metrics mean, for the reports."""
    return {"warm_slice": f"targets with more than {cold_max_interactions} training interactions",
            "cold_slice": f"targets with at most {cold_max_interactions} training interactions (cold-start items)",
            "unseen_slice": "targets absent from every training history"}
