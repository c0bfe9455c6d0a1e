import numpy as np
import pytest

from pipelines.evaluate import metrics


def test_hand_made_example():
    # 2 users, items 1..5 (column 0 = padding)
    scores = np.array([[9, 0.9, 0.8, 0.7, 0.6, 0.5],
                       [9, 0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    histories = [np.array([1]), np.array([5])]
    masked = metrics.mask_scores(scores, histories, mask_seen=True)
    assert np.isneginf(masked[:, 0]).all() and np.isneginf(masked[0, 1]) and np.isneginf(masked[1, 5])
    ranks = metrics.target_ranks(masked, np.array([3, 1]))
    # user 0: items 2 (0.8) beats 3 (0.7) -> rank 1; user 1: 4, 3, 2 beat 1 -> rank 3
    assert ranks.tolist() == [1, 3]
    assert metrics.hit_rate(ranks, 2) == 0.5
    assert metrics.ndcg(ranks, 10) == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / 2)
    assert metrics.mrr(ranks) == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert metrics.top_k(masked, 2).tolist() == [[2, 3], [4, 3]]


def test_masked_target_is_never_a_hit_and_constant_scores_are_not_rewarded():
    scores = np.zeros((1, 6), dtype=np.float32)
    masked = metrics.mask_scores(scores, [np.array([2])], mask_seen=True)
    assert metrics.target_ranks(masked, np.array([2]))[0] == 6
    # all equal scores: target 5 ranks behind 1..4, not first
    assert metrics.target_ranks(metrics.mask_scores(scores, [np.array([], dtype=np.int64)], True), np.array([5]))[0] == 4


def test_ranks_inside_a_top_k_list():
    top = np.array([[4, 2, 7], [1, 3, 5]])
    assert metrics.ranks_in_top_k(top, np.array([7, 6])).tolist() == [2, 3]  # 6 is not in the list: rank k
