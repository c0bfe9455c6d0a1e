import numpy as np

from pipelines.data.sequences import Sequences
from pipelines.evaluate.slices import standard_slices


def test_slices_split_users_by_target_and_history():
    items = [np.array([1, 2, 3, 4, 5, 6, 7]), np.array([1, 2, 9]), np.array([2, 1, 3, 1])[:3]]
    seqs = Sequences(user_ids=np.arange(3), items=items, times=[np.arange(len(i), dtype=float) for i in items],
                     n_items=10)
    s = standard_slices(seqs, "test", cold_max_interactions=0, head_share=0.2)
    # targets 7, 9, 3; counts in what models learn from: 7 and 9 never, 3 once (user 0's history)
    assert s["cold_start"].tolist() == [True, True, False]
    assert s["users_5_plus"].tolist() == [True, False, False] and s["users_1_4"].tolist() == [False, True, True]
    assert s["long_tail"].tolist() == [True, True, True]  # head = items 1 and 2
