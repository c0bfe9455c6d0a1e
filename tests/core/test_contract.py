import numpy as np
import pytest

from pipelines.core.contract import (
    EVENT_KINDS,
    MAX_LEN,
    N_ITEMS,
    TOP_K,
    ModelMetadata,
    disagreeing_rows,
    left_pad,
    profile_shapes,
)

# ------------------------------------------------------------------------------------------ left_pad


def test_left_pad_keeps_the_last_items_and_pads_on_the_left():
    out = left_pad([[1, 2, 3, 4], [5], np.array([6, 7])], 3)
    assert out.dtype == np.int64
    assert out.tolist() == [[2, 3, 4], [0, 0, 5], [0, 6, 7]]


def test_left_pad_width_is_the_longest_kept_history_unless_given():
    assert left_pad([[1], [2, 3]]).shape == (2, 2)  # no length: everything is kept
    assert left_pad([[1], [2, 3]], 50).shape == (2, 2)  # never wider than needed
    assert left_pad([[1], []], 4, width=4).tolist() == [[0, 0, 0, 1], [0, 0, 0, 0]]
    assert left_pad([[]]).shape == (1, 1) and left_pad([], 3).shape == (0, 1)  # at least one column


def test_left_pad_refuses_what_it_cannot_honour():
    with pytest.raises(ValueError, match="length"):
        left_pad([[1, 2]], 0)
    with pytest.raises(ValueError, match="narrower"):
        left_pad([[1, 2, 3]], 3, width=2)
    with pytest.raises(OverflowError):
        left_pad([[2**70]])


# ------------------------------------------------------------------------------------ ModelMetadata


def test_metadata_round_trips_through_props():
    meta = ModelMetadata(n_items=300, max_len=20, top_k=10, mask_seen=False, event_kinds=4)
    assert ModelMetadata.from_props(meta.to_props()) == meta
    assert meta.to_props() == {"n_items": "300", "max_len": "20", "top_k": "10", "mask_seen": "false",
                               "event_kinds": "4"}


def test_metadata_defaults_for_keys_older_exports_lack():
    meta = ModelMetadata.from_props({N_ITEMS: "5", MAX_LEN: "8", TOP_K: "3"})
    assert (meta.event_kinds, meta.mask_seen) == (0, True)


@pytest.mark.parametrize(("props", "words"), [
    ({MAX_LEN: "8", TOP_K: "3"}, "lacks ONNX metadata 'n_items'"),
    ({N_ITEMS: "five", MAX_LEN: "8", TOP_K: "3"}, "n_items='five'"),
    ({N_ITEMS: "5", MAX_LEN: "0", TOP_K: "3"}, "max_len='0'"),
    ({N_ITEMS: "5", MAX_LEN: "8", TOP_K: "-3"}, "top_k='-3'"),
    ({N_ITEMS: "5", MAX_LEN: "8", TOP_K: "3", EVENT_KINDS: "x"}, "event_kinds='x'"),
    ({N_ITEMS: "5", MAX_LEN: "8", TOP_K: "3", "mask_seen": "maybe"}, "mask_seen='maybe'"),
])
def test_metadata_errors_name_the_source_and_the_key(props, words):
    with pytest.raises(ValueError, match="m.onnx") as info:
        ModelMetadata.from_props(props, source="m.onnx")
    assert words in str(info.value)


# ---------------------------------------------------------------------------------- profile shapes


def test_profile_shapes_span_batch_and_length():
    lo, opt, hi = profile_shapes(("batch", "length"), max_batch=32, opt_batch=4, max_len=20)
    assert (lo, opt, hi) == ((1, 1), (4, 20), (32, 20))
    # -1 (Triton dims) and None (unnamed ONNX dims) are dynamic too; fixed dims stay as they are
    assert profile_shapes((-1, None, 7), max_batch=8, opt_batch=16, max_len=5) == ((1, 1, 7), (8, 5, 7), (8, 5, 7))
    assert profile_shapes((2, 1), max_batch=8, opt_batch=4, max_len=None) == ((2, 1), (2, 1), (2, 1))


def test_profile_shapes_need_max_len_for_a_dynamic_length():
    with pytest.raises(ValueError, match="'input_ids' has a dynamic length"):
        profile_shapes((-1, -1), max_batch=8, opt_batch=4, max_len=None, name="input_ids")
    with pytest.raises(ValueError, match="scalar"):
        profile_shapes((), max_batch=8, opt_batch=4, max_len=3)


# ------------------------------------------------------------------------------- top-k agreement


def test_engine_check_tolerates_near_ties_only():
    ref_ids, ref = np.array([[1, 2, 3, 4]]), np.array([[5.0, 4.0, 3.0, 2.0]], dtype=np.float32)
    same = disagreeing_rows(ref_ids, ref, ref_ids, ref, tolerance=1e-3)
    near_tie = disagreeing_rows(ref_ids, np.array([[5.0, 4.0, 3.0, 3.0]]), np.array([[1, 2, 4, 3]]),
                                np.array([[5.0, 4.0, 3.0, 3.0]]), tolerance=1e-3)
    swapped = disagreeing_rows(ref_ids, ref, np.array([[2, 1, 3, 4]]), ref, tolerance=1e-3)
    last_slot = disagreeing_rows(ref_ids, ref, np.array([[1, 2, 3, 9]]),
                                 np.array([[5.0, 4.0, 3.0, 2.0005]]), tolerance=1e-3)
    worse_item = disagreeing_rows(ref_ids, ref, np.array([[1, 2, 3, 9]]),
                                  np.array([[5.0, 4.0, 3.0, 1.0]]), tolerance=1e-3)
    assert not same.any() and not near_tie.any() and not last_slot.any()
    assert swapped.all() and worse_item.all()


def test_near_ties_may_swap_but_real_differences_may_not():
    """Export parity: ONNX's items scored by torch (all logits known) against torch's own top-k."""
    t_all = np.array([[-1e9, 5.0, 4.0, 3.0 + 1e-7, 3.0, 1.0]], dtype=np.float32)
    t_ids, t_scores = np.array([[1, 2, 3, 4]]), t_all[:, [1, 2, 3, 4]]

    def disagrees(o_ids: np.ndarray) -> np.ndarray:
        return disagreeing_rows(t_ids, t_scores, o_ids, np.take_along_axis(t_all, o_ids, axis=1))

    assert not disagrees(t_ids).any()
    assert not disagrees(np.array([[1, 2, 4, 3]])).any()  # near-tie swapped
    assert disagrees(np.array([[2, 1, 3, 4]])).all()  # 5.0 vs 4.0: not a tie
    assert disagrees(np.array([[1, 2, 3, 5]])).all()  # a worse item got in


def test_lists_of_another_shape_disagree():
    ids, scores = np.array([[1, 2]]), np.array([[2.0, 1.0]])
    assert disagreeing_rows(ids, scores, np.array([[1, 2, 3]]), np.array([[2.0, 1.0, 0.5]])).all()
