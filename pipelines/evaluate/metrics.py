"""Ranking metrics against all items: one definition for every model."""

from __future__ import annotations

import numpy as np

MASKED = -np.inf


def mask_scores(scores: np.ndarray, histories: list[np.ndarray], mask_seen: bool) -> np.ndarray:
    """Padding (column 0) never ranks; with `mask_seen`, neither does anything in the history."""
    scores = scores.astype(np.float32, copy=True)
    scores[:, 0] = MASKED
    if mask_seen:
        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.concatenate(histories) if histories else np.array([], dtype=np.int64)
        scores[rows, cols] = MASKED
    return scores


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target: how many items score strictly higher.

    Ties count in the target's favour only up to its own position in a stable sort, which makes
    a model that gives every item the same score rank targets by id, not at the top.
    """
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    higher = (scores > target_scores).sum(axis=1)
    ties_before = ((scores == target_scores) & (np.arange(scores.shape[1]) < targets[:, None])).sum(axis=1)
    ranks = higher + ties_before
    ranks[~np.isfinite(target_scores[:, 0])] = scores.shape[1]  # a masked target is never found
    return ranks


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """One relevant item per user, so IDCG = 1."""
    if not len(ranks):
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean())


def mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / (ranks + 1.0))) if len(ranks) else 0.0


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Item ids of the k best scores per row, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def ranks_in_top_k(top: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target inside its row of best-first ids; top.shape[1] where it is absent.

    For a model that only returns its top k: exact for HR@k and NDCG@k, not for MRR.
    """
    hit = top == targets[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), top.shape[1]).astype(np.int64)
