"""The pure parts of the served-model check: which sessions it asks, what counts as the same answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.core.config import Paths
from pipelines.serve.check import _deployed, _same_ranking, popularity_top_k, sample_sessions


def test_same_ranking_allows_near_ties_only():
    ids, scores = np.array([[3, 1, 2]]), np.array([[0.9, 0.5, 0.5]], dtype=np.float32)
    assert _same_ranking(ids, scores, ids, scores)
    assert _same_ranking(np.array([[3, 2, 1]]), scores, ids, scores)  # tied items swapped
    assert not _same_ranking(np.array([[1, 3, 2]]), np.array([[0.5, 0.9, 0.5]], dtype=np.float32), ids, scores)
    assert not _same_ranking(ids, scores * 2, ids, scores)  # same order, other scores: another model


def test_deployed_version_folder_of_a_model():
    deploy = {"models": {"similar_items": {"version_path": "/repo/similar_items/3"}, "recommend": {"skipped": "x"}}}
    assert _deployed(deploy, "similar_items") == Path("/repo/similar_items/3")
    assert _deployed(deploy, "recommend") is None and _deployed({}, "gpt4rec") is None


def test_popularity_list_skips_padding_and_items_outside_the_catalogue(tmp_path: Path):
    np.save(tmp_path / "popularity.npy", np.array([99.0, 1.0, 5.0, 5.0, 7.0, 0.5], dtype=np.float32))
    np.save(tmp_path / "catalogue.npy", np.array([True, True, True, True, False, True]))
    assert popularity_top_k(tmp_path, 3) == [2, 3, 1]  # ties by id; 0 is padding, 4 is not sold
    assert popularity_top_k(tmp_path, 3, exclude=[2]) == [3, 1, 5]


def test_sample_sessions_are_the_latest_items_of_users_with_three_or_more(tmp_path: Path):
    from pipelines.data.sequences import Sequences, save_sequences

    p = Paths(tmp_path)
    histories = [np.array([1, 2]), np.array([1, 2, 3, 4, 5, 6]), np.array([7, 8, 9, 1]), np.array([2, 3, 4, 5])]
    seqs = Sequences(np.arange(4), histories, [np.arange(len(h), dtype=float) for h in histories], n_items=9)
    save_sequences(seqs, p.features)
    test_histories, _, _ = seqs.evaluation("test")
    want = [h[-2:].tolist() for h in test_histories if len(h) >= 3][:2]
    assert sample_sessions(p, 2, max_len=2) == want
    with pytest.raises(ValueError, match="sessions with 3\\+ items"):
        sample_sessions(p, 50, max_len=2)
