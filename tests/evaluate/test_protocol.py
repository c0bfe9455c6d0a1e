"""The one evaluation protocol on a hand-made world whose every figure is worked out by hand.

Three users, items 1..6; each user's last item is the test target, the one before it the
validation target, the rest is training history:
    user 0: 4 5 1 | 2 | 3    (test history 4 5 1 2, target 3)
    user 1: 4 1 | 6 | 5      (test history 4 1 6, target 5)
    user 2: 2 | 6 | 4        (test history 2 6, target 4)
Training interactions per item: 1 -> 2, 2 -> 1, 3 -> 0, 4 -> 2, 5 -> 1, 6 -> 0.
A fixed model ranks 1 > 2 > 3 > 4 > 5 > 6 for everyone; with seen items masked the targets rank
    user 0: 3 among {3, 6} -> 0;  user 1: 5 among {2, 3, 5} -> 2;  user 2: 4 among {1, 3, 4, 5} -> 2.
"""

import numpy as np
import pytest

from pipelines.data.sequences import Sequences
from pipelines.evaluate.protocol import TopKRanker, evaluate, user_sample
from pipelines.evaluate.slices import (
    cold_start_items,
    cold_start_users,
    standard_slices,
    training_interactions,
    unseen_items,
)

ITEM_SCORES = np.array([0, 6, 5, 4, 3, 2, 1], dtype=np.float32)  # column 0 = padding


def _world(kinds: bool = False) -> Sequences:
    items = [np.array([4, 5, 1, 2, 3]), np.array([4, 1, 6, 5]), np.array([2, 6, 4])]
    return Sequences(user_ids=np.arange(3), items=items, times=[np.arange(len(i), dtype=float) for i in items],
                     n_items=6, kinds=[np.full(len(i), u + 1, dtype=np.int8) for u, i in enumerate(items)]
                     if kinds else None)


class FixedScores:
    name = "fixed"

    def score(self, histories):
        return np.tile(ITEM_SCORES, (len(histories), 1))


def test_training_interactions_and_the_one_cold_start_definition():
    seqs = _world()
    assert training_interactions(seqs).tolist() == [0, 2, 1, 0, 2, 1, 0]
    assert np.flatnonzero(cold_start_items(seqs, 1)).tolist() == [2, 3, 5, 6]  # padding is never cold
    assert np.flatnonzero(unseen_items(seqs)).tolist() == [3, 6]
    assert cold_start_users(seqs, "test", 1).tolist() == [True, True, False]  # targets 3, 5, 4
    assert cold_start_users(seqs, "test", 0).tolist() == [True, False, False]
    assert cold_start_users(seqs, "valid", 0).tolist() == [False, True, True]  # targets 2, 6, 6


def test_hit_rate_ndcg_mrr_and_coverage_by_hand():
    seqs = _world()
    top_lists: dict[int, np.ndarray] = {}
    m = evaluate(FixedScores(), seqs, k=2, top_lists=top_lists)
    assert m["hr_at_2"] == pytest.approx(1 / 3)  # only user 0 (rank 0)
    assert m["ndcg_at_2"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert {u: ids.tolist() for u, ids in top_lists.items()} == {0: [3, 6], 1: [2, 3], 2: [1, 3]}
    assert m["coverage_at_2"] == pytest.approx(4 / 6)  # items 1, 2, 3, 6
    assert m["n_users"] == 3.0
    m3 = evaluate(FixedScores(), seqs, k=3)
    assert m3["hr_at_3"] == 1.0 and m3["ndcg_at_3"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_without_masking_seen_items_rank_too():
    m = evaluate(FixedScores(), _world(), k=3, mask_seen=False)
    # user 0: 1, 2 above 3 -> 2; user 1: 1..4 above 5 -> 4; user 2: 1, 2, 3 above 4 -> 3
    assert m["hr_at_3"] == pytest.approx(1 / 3) and m["mrr"] == pytest.approx((1 / 3 + 1 / 5 + 1 / 4) / 3)


def test_slices_by_hand():
    seqs = _world()
    slices = standard_slices(seqs, "test", cold_max_interactions=1, head_share=0.2)
    assert slices["cold_start"].tolist() == [True, True, False]
    assert slices["long_tail"].tolist() == [True, True, True]  # head = item 1 (2 interactions, first of a tie)
    assert slices["users_1_4"].tolist() == [True, True, True] and not slices["users_5_plus"].any()
    m = evaluate(FixedScores(), seqs, k=3, slices=slices)["slices"]
    assert m["cold_start"] == {"hr_at_3": 1.0, "ndcg_at_3": pytest.approx((1 + 0.5) / 2), "n_users": 2}
    assert m["users_5_plus"] == {"hr_at_3": 0.0, "ndcg_at_3": 0.0, "n_users": 0}
    for one in range(3):  # masks cut to the evaluated (sampled) users
        sampled = {"cold_start": np.arange(3) == one}
        m = evaluate(FixedScores(), seqs, k=3, slices=sampled, max_users=1)["slices"]["cold_start"]
        assert m["n_users"] == int(user_sample(3, 1)[0] == one)


def test_a_top_k_only_model_ranks_exactly_inside_its_list():
    seqs = _world()
    lists = {4: [3, 6, 4], 3: [2, 3, 5], 2: [1, 3, 4]}  # by history length (= user), best first, masked

    def recommend(histories, kinds):
        return np.array([lists[len(h)] for h in histories])

    ranker = TopKRanker("onnx", recommend, top_k=3)
    full = evaluate(FixedScores(), seqs, k=3)
    top = evaluate(ranker, seqs, k=3, slices={"cold_start": cold_start_users(seqs, "test", 1)})
    assert {key: top[key] for key in ("hr_at_3", "ndcg_at_3", "n_users")} == \
        {key: full[key] for key in ("hr_at_3", "ndcg_at_3", "n_users")}
    assert "mrr" not in top  # not exact from a top-k list
    assert top["coverage_at_3"] == 1.0
    at_1 = evaluate(ranker, seqs, k=1)
    assert at_1["hr_at_1"] == pytest.approx(1 / 3)  # user 0 only; users 1, 2 are beyond k: misses
    with pytest.raises(ValueError, match="more than the 3 ids"):
        evaluate(ranker, seqs, k=4)


def test_event_kinds_reach_models_that_use_them():
    seqs = _world(kinds=True)
    seen: list[list[int]] = []

    def recommend(histories, kinds):
        seen.extend(k.tolist() for k in kinds)
        return np.array([[1, 2]] * len(histories))

    evaluate(TopKRanker("onnx", recommend, top_k=2, uses_event_kinds=True), seqs, k=2, batch_size=2)
    assert seen == [[1, 1, 1, 1], [2, 2, 2], [3, 3]]
    without: list[object] = []

    def recommend_without_kinds(histories, kinds):
        without.append(kinds)
        return np.array([[1, 2]] * len(histories))

    evaluate(TopKRanker("onnx", recommend_without_kinds, top_k=2), seqs, k=2)
    assert without == [None]


def test_a_fixed_user_sample_above_max_users_ranks_the_same_users_every_time():
    rng = np.random.default_rng(1)
    items = [rng.choice(np.arange(1, 41), size=6, replace=False) for _ in range(200)]
    seqs = Sequences(user_ids=np.arange(200), items=items, times=[np.arange(6, dtype=float)] * 200, n_items=40)
    asked: list[list[int]] = []

    class Recording:
        name = "recording"

        def score(self, histories):
            asked.append([int(h[0]) for h in histories])
            return np.tile(np.arange(41, dtype=np.float32), (len(histories), 1))

    assert user_sample(200, None) is None and user_sample(200, 0) is None and user_sample(200, 200) is None
    chosen = user_sample(200, 50)
    assert len(chosen) == len(set(chosen.tolist())) == 50 and (np.diff(chosen) > 0).all()
    assert chosen.tolist() != list(range(50))  # a sample, not the first users
    odd = np.arange(200) % 2 == 1
    result = evaluate(Recording(), seqs, max_users=50, slices={"odd": odd})
    assert result["n_users"] == 50 and asked[0] == [int(items[i][0]) for i in chosen]
    assert result["slices"]["odd"]["n_users"] == int(odd[chosen].sum())
    asked.clear()
    assert evaluate(Recording(), seqs, max_users=50) == {k: v for k, v in result.items() if k != "slices"}
    assert asked[0] == [int(items[i][0]) for i in chosen]
    assert evaluate(Recording(), seqs, max_users=0)["n_users"] == 200
