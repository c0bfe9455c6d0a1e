import numpy as np
import pandas as pd
import pytest

from pipelines.data.sequences import build_sequences, load_sequences, save_sequences


def _events(rows):
    return pd.DataFrame(rows, columns=["user_id", "session_id", "item_id", "event_type", "timestamp"]).assign(
        timestamp=lambda d: pd.to_datetime(d["timestamp"], unit="s")
    )


def test_first_touch_per_item_in_time_order():
    events = _events([
        (1, 1, 5, "view", 10), (1, 1, 5, "add_to_cart", 11), (1, 1, 3, "view", 12),
        (1, 2, 5, "purchase", 50), (1, 2, 9, "view", 51), (1, 2, 2, "view", 52),
        (2, 3, 4, "view", 5), (2, 3, 1, "view", 6),
    ])
    seqs = build_sequences(events, n_items=9)
    assert seqs.user_ids.tolist() == [1, 2]
    assert seqs.items[0].tolist() == [5, 3, 9, 2]
    assert seqs.items[1].tolist() == [4, 1]


def test_leave_one_out_split():
    events = _events([(1, 1, item, "view", t) for t, item in enumerate((5, 3, 9, 2))] + [(2, 2, 4, "view", 1), (2, 2, 1, "view", 2)])
    seqs = build_sequences(events, n_items=9)
    assert [t.tolist() for t in seqs.train()] == [[5, 3], [4, 1]]  # user 2 is too short to evaluate
    histories, targets, rows = seqs.evaluation("test")
    assert [h.tolist() for h in histories] == [[5, 3, 9]] and targets.tolist() == [2] and rows.tolist() == [0]
    histories, targets, _ = seqs.evaluation("valid")
    assert [h.tolist() for h in histories] == [[5, 3]] and targets.tolist() == [9]


def test_round_trip(tmp_path):
    events = _events([(1, 1, item, "view", t) for t, item in enumerate((5, 3, 9, 2))])
    seqs = build_sequences(events, n_items=9)
    save_sequences(seqs, tmp_path)
    again = load_sequences(tmp_path)
    assert again.n_items == 9 and again.items[0].tolist() == [5, 3, 9, 2]
    np.testing.assert_allclose(again.times[0], seqs.times[0])


def test_event_kind_is_the_strongest_event_before_the_next_item():
    # Item 5: view, cart, then item 3 is touched; its purchase at t=50 comes later and must not leak.
    events = _events([
        (1, 1, 5, "view", 10), (1, 1, 5, "add_to_cart", 11), (1, 1, 3, "view", 12), (1, 1, 3, "click", 13),
        (1, 2, 5, "purchase", 50), (1, 2, 9, "view", 51), (1, 2, 9, "purchase", 52),
    ])
    seqs = build_sequences(events, n_items=9)
    # codes: view 1, click 2, add_to_cart 3, purchase 4
    assert seqs.items[0].tolist() == [5, 3, 9]
    assert seqs.kinds[0].tolist() == [3, 2, 4]
    assert [k.tolist() for k in seqs.evaluation_kinds("test")] == [[3, 2]]
    assert [k.tolist() for k in seqs.evaluation_kinds("valid")] == [[3]]


def test_kinds_survive_save_and_load(tmp_path):
    events = _events([(1, 1, 5, "view", 1), (1, 1, 5, "purchase", 2), (1, 1, 6, "view", 3)])
    seqs = build_sequences(events, n_items=9)
    save_sequences(seqs, tmp_path)
    loaded = load_sequences(tmp_path)
    assert [k.tolist() for k in loaded.kinds] == [[4, 1]]


def test_the_refit_view_trains_on_the_validation_target_and_cannot_be_scored_on_it():
    events = _events([(1, 1, item, "view", t) for t, item in enumerate((5, 3, 9, 2))] + [(2, 2, 4, "view", 1), (2, 2, 1, "view", 2)])
    seqs = build_sequences(events, n_items=9)
    refit = seqs.with_validation_in_training()
    assert [t.tolist() for t in refit.train()] == [[5, 3, 9], [4, 1]]  # user 1's validation target is now data
    assert [k.tolist() for k in refit.train_kinds()] == [seqs.kinds[0].tolist()[:3], seqs.kinds[1].tolist()]
    histories, targets, _ = refit.evaluation("test")  # the test split is what it was
    assert [h.tolist() for h in histories] == [[5, 3, 9]] and targets.tolist() == [2]
    with pytest.raises(ValueError, match="validation split is training data"):
        refit.evaluation("valid")
    assert [t.tolist() for t in seqs.train()] == [[5, 3], [4, 1]]  # the original is untouched


def test_one_step_earlier_makes_the_validation_target_the_test_target_and_drops_the_test_item():
    events = _events([(1, 1, item, "view", t) for t, item in enumerate((5, 3, 9, 2))] + [(2, 2, 4, "view", 1), (2, 2, 1, "view", 2)])
    earlier = build_sequences(events, n_items=9).one_step_earlier()
    assert [t.tolist() for t in earlier.items] == [[5, 3, 9], [4, 1]]  # user 2 was never evaluated: kept whole
    assert all(len(t) == len(i) == len(k) for t, i, k in zip(earlier.times, earlier.items, earlier.kinds))
    histories, targets, _ = earlier.evaluation("test")
    assert [h.tolist() for h in histories] == [[5, 3]] and targets.tolist() == [9]
    assert 2 not in np.concatenate(earlier.items)  # the real test target is gone
