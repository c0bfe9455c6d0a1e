"""MF, association rules and NCF on tiny data: they learn, save and load, and score like the protocol expects."""

import numpy as np
import pytest

from pipelines.data.sequences import Sequences
from pipelines.evaluate.protocol import evaluate
from pipelines.models.base import FitContext
from pipelines.models.families import load_recommenders
from pipelines.models.mf import MatrixFactorization, MFSettings, interaction_matrix
from pipelines.models.ncf import NCFRecommender, NCFSettings
from pipelines.models.popularity import PopularityRecommender, PopularitySettings
from pipelines.models.rules import AssociationRules, RulesSettings

QUIET = FitContext(seed=0, progress=False)


def _fit(name, seqs):
    if name == "mf":
        return MatrixFactorization.fit(seqs, MFSettings(factors=16, iterations=8), QUIET)[0]
    if name == "rules":
        return AssociationRules.fit(seqs, RulesSettings(), QUIET)[0]
    model, info = NCFRecommender.fit(seqs, NCFSettings(dim=16, hidden=32, epochs=10, samples_per_user=8, lr=0.01,
                                                       max_len=10), QUIET)
    losses = info["losses"]
    assert losses[-1] < losses[0]  # the loss decreases
    return model


@pytest.mark.parametrize("name", ["mf", "rules", "ncf"])
def test_learns_the_structure_and_beats_popularity(name, cyclic_world, tmp_path):
    model = _fit(name, cyclic_world)
    learned = evaluate(model, cyclic_world, k=10)
    baseline = evaluate(PopularityRecommender.fit(cyclic_world, PopularitySettings(window_days=30), QUIET)[0],
                        cyclic_world, k=10)
    assert learned["ndcg_at_10"] > baseline["ndcg_at_10"] + 0.2, (learned, baseline)
    model.save(tmp_path / name)
    again = load_recommenders(tmp_path)[name]
    histories = [np.array([3, 4, 5]), np.array([7])]
    np.testing.assert_allclose(again.score(histories), model.score(histories), rtol=1e-5, atol=1e-6)


def test_rules_follow_what_comes_next():
    histories = [np.array([1, 2, 3])] * 5 + [np.array([1, 4])] * 2
    rules = AssociationRules.from_histories(histories, 4, RulesSettings(window=1, min_support=2, recent_items=1))
    scores = rules.score([np.array([1])])[0]
    assert scores[2] > scores[4] > scores[3]  # P(2|1) = 5/7 > P(4|1) = 2/7 > rule-less item 3
    assert rules.rules[2, 3] == pytest.approx(1.0)


def test_mf_fold_in_matches_a_training_user():
    histories = [np.array([1, 2, 3]), np.array([2, 3, 4]), np.array([4, 5])]
    # Each user's last two items are held out for validation and test: train on exactly `histories`.
    seqs = Sequences(user_ids=np.arange(3), items=[np.concatenate([h, [1, 2]]) for h in histories],
                     times=[np.arange(len(h) + 2, dtype=np.float64) for h in histories], n_items=5)
    assert [h.tolist() for h in seqs.train()] == [h.tolist() for h in histories]
    model = MatrixFactorization.fit(seqs, MFSettings(factors=4, iterations=5), QUIET)[0]
    assert interaction_matrix(histories, 5).shape == (3, 6)
    scores = model.score([np.array([1, 2])])
    assert scores.shape == (1, 6) and np.isfinite(scores).all()


def test_mf_row_update_is_the_closed_form_whatever_the_chunking():
    """Chunked by padded cells (a best-seller gets a chunk of its own): the same ridge solution per row."""
    from pipelines.models.mf import _solve_rows

    rng = np.random.default_rng(0)
    histories = [rng.integers(1, 301, size=rng.integers(1, 30)) for _ in range(400)]
    histories[7] = np.arange(1, 301)  # one row as long as the catalogue
    histories[11] = np.array([], dtype=np.int64)  # and one empty row
    matrix = interaction_matrix(histories, 300)
    other = rng.standard_normal((301, 8)).astype(np.float32)
    gram = other.T.astype(np.float64) @ other + 50.0 * np.eye(8)
    expected = np.zeros((len(histories), 8))
    for row in range(len(histories)):
        cols = matrix.indices[matrix.indptr[row]:matrix.indptr[row + 1]]
        if len(cols):
            vecs = other[cols].astype(np.float64)
            expected[row] = np.linalg.solve(gram + 40.0 * vecs.T @ vecs, 41.0 * vecs.sum(0))
    for max_cells in (1, 500, 10**9):
        np.testing.assert_allclose(_solve_rows(matrix, other, 40.0, 50.0, max_cells=max_cells), expected,
                                   rtol=1e-4, atol=1e-5)
