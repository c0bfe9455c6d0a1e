import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.graph.cooccurrence import cooccurrence_graph, token_weights
from pipelines.graph.walks import WalkSampler, invalid_transitions


def test_cooccurrence_is_symmetric_and_weighted_by_distance():
    g = cooccurrence_graph([np.array([1, 2, 3])], n_items=3, window=2)
    dense = g.toarray()
    assert np.allclose(dense, dense.T)
    assert dense[1, 2] == 1.0 and dense[1, 3] == 0.5 and dense[0].sum() == 0


def test_walks_only_follow_edges_and_are_deterministic():
    rng = np.random.default_rng(0)
    n = 300
    rows = rng.integers(1, n + 1, 4000)
    cols = rng.integers(1, n + 1, 4000)
    w = rng.random(4000).astype(np.float32) * 1e-3  # tiny float32 weights: sums round below 1
    g = sp.coo_matrix((np.r_[w, w], (np.r_[rows, cols], np.r_[cols, rows])), shape=(n + 1, n + 1)).tocsr()
    g.setdiag(0)
    g.eliminate_zeros()
    sampler = WalkSampler(g)
    starts = sampler.start_nodes(5, 0.5, np.random.default_rng(1))
    walks = sampler.walk(starts, 30, np.random.default_rng(2))
    again = sampler.walk(starts, 30, np.random.default_rng(2))
    assert np.array_equal(walks, again)
    src, dst = walks[:, :-1].ravel(), walks[:, 1:].ravel()
    assert (np.asarray(g[src, dst]).ravel() > 0).all()  # zero invalid transitions


def test_transition_frequencies_follow_weights():
    g = sp.csr_matrix(np.array([[0, 0, 0, 0], [0, 0, 3, 1], [0, 1, 0, 0], [0, 1, 0, 0]], dtype=float))
    sampler = WalkSampler(g)
    walks = sampler.walk(np.full(20000, 1), 2, np.random.default_rng(0))
    share = (walks[:, 1] == 2).mean()
    assert abs(share - 0.75) < 0.02


def test_nodes_without_edges_at_the_end_of_the_catalogue_have_zero_strength():
    # Items 4 and 5 (the newest products) were never seen with another one: the last rows are empty.
    g = cooccurrence_graph([np.array([1, 2]), np.array([2, 3])], n_items=5, window=1)
    sampler = WalkSampler(g)
    assert sampler.strength.tolist() == [0.0, 1.0, 2.0, 1.0, 0.0, 0.0]
    walks = sampler.walk(np.array([4, 5, 1]), 3, np.random.default_rng(0))
    assert walks[0].tolist() == [4, 4, 4] and walks[2, 1] == 2  # an isolated start stays where it is


def test_balanced_starts_cover_unpopular_nodes():
    g = cooccurrence_graph([np.array([1, 2])] * 50 + [np.array([3, 4])], n_items=4, window=1)
    sampler = WalkSampler(g)
    starts = sampler.start_nodes(10, 0.5, np.random.default_rng(0))
    assert len(starts) == 40 and set(starts) == {1, 2, 3, 4}
    assert (starts == 3).sum() >= 5  # the uniform half reaches the rare pair


def test_walks_do_not_depend_on_the_thread_count():
    import numba

    g = cooccurrence_graph([np.random.default_rng(i).permutation(50)[:8] + 1 for i in range(200)], 50, 2)
    sampler = WalkSampler(g)
    starts = sampler.start_nodes(3, 0.5, np.random.default_rng(0))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = sampler.walk(starts, 20, 7)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = sampler.walk(starts, 20, 7)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, two)
    assert not np.array_equal(one, sampler.walk(starts, 20, 8))


def test_sampler_memory_grows_with_edges_and_invalid_steps_are_counted():
    g = cooccurrence_graph([np.array([1, 2, 3, 4])], n_items=4, window=1)
    sampler = WalkSampler(g)
    assert sampler.nbytes == 12 * g.nnz + 8 * (g.shape[0] + 1)  # + the int64 row pointer
    walks = sampler.walk(np.array([1, 2, 3, 4, 0]), 6, 0)
    assert invalid_transitions(g, walks) == 0  # node 0 has no edges: staying put is valid
    assert (walks[4] == 0).all()
    assert invalid_transitions(g, np.array([[1, 3], [1, 2]], dtype=np.int32)) == 1


def test_event_weights_scale_edges_by_the_strongest_event():
    import pandas as pd

    events = pd.DataFrame({"user_id": [7, 7, 7, 7], "item_id": [1, 2, 2, 3],
                           "event_type": ["view", "view", "purchase", "view"]})
    weights = token_weights(np.array([7]), [np.array([1, 2, 3])], events, {"view": 1.0, "purchase": 5.0})
    assert weights[0].tolist() == [1.0, 5.0, 1.0]
    g = cooccurrence_graph([np.array([1, 2, 3])], 3, 2, weights).toarray()
    assert g[1, 2] == 3.0 and g[1, 3] == 0.5  # (1 + 5) / 2 / 1 and (1 + 1) / 2 / 2
    with pytest.raises(ValueError, match="no weight for event types"):
        token_weights(np.array([7]), [np.array([1, 2, 3])], events, {"view": 1.0})
