"""Stored user vectors: GPT4Rec's state after each user's history, and their retrieval (exact and faiss HNSW)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.data.sequences import Sequences
from pipelines.models.user_vectors import UserRetrieval, UserVectors
from tests.models.conftest import make_cyclic_world

torch = pytest.importorskip("torch")


def small_model(n_items: int, event_kinds: int = 0):
    from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig

    torch.manual_seed(0)
    return GPT4Rec(GPT4RecConfig(n_items=n_items, dim=16, layers=2, heads=2, max_len=6, dropout=0.1,
                                 event_kinds=event_kinds))


def test_a_user_vector_scores_items_as_the_model_does_after_their_whole_history():
    seqs = make_cyclic_world(n_users=50, n_items=30, length=9)
    shuffled = np.random.default_rng(1).permutation(len(seqs))  # users in any order: stored sorted by id
    seqs = Sequences(user_ids=seqs.user_ids[shuffled] * 7, items=[seqs.items[i] for i in shuffled],
                     times=[seqs.times[i] for i in shuffled], n_items=seqs.n_items)
    model = small_model(30).train()
    users = model.user_embeddings(seqs)
    assert model.training  # the model is left as it was found (dropout was off while the states were read)
    model.eval()
    assert users.user_ids.tolist() == sorted(seqs.user_ids.tolist())
    assert users.vectors.shape == (50, 16) and users.item_vectors.shape == (31, 16)
    expected = model.score(seqs.items)  # longer than max_len: both read the latest 6 items
    for i, user in enumerate(seqs.user_ids[:10]):
        row = int(users.rows(np.array([user]))[0])
        assert np.allclose(users.vectors[row] @ users.item_vectors.T, expected[i], atol=1e-4)


def test_event_kinds_shape_the_vector_of_a_model_that_reads_them():
    seqs = make_cyclic_world(n_users=20, n_items=15, length=5)
    kinds = [np.full(len(s), 4, dtype=np.int64) for s in seqs.items]
    with_kinds = Sequences(seqs.user_ids, seqs.items, seqs.times, seqs.n_items, kinds)
    model = small_model(15, event_kinds=4).eval()
    with torch.no_grad():
        model.kind_emb.weight[4].normal_()
    read = model.user_embeddings(with_kinds)
    assert np.allclose(read.vectors @ read.item_vectors.T, model.score(seqs.items, kinds), atol=1e-4)
    assert not np.allclose(read.vectors, model.user_embeddings(seqs).vectors)


def test_an_unknown_or_anonymous_user_has_no_row():
    users = UserVectors.build(np.array([9, 3, 5]), np.eye(3, 4, dtype=np.float32), np.ones((6, 4), np.float32))
    assert users.rows(np.array([3, 5, 9, 0, 4, 100])).tolist() == [0, 1, 2, -1, -1, -1]
    empty = UserVectors.build(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.ones((6, 4), np.float32))
    assert empty.rows(np.array([1])).tolist() == [-1]


@pytest.mark.parametrize(("change", "said"), [
    (lambda u: UserVectors(u.user_ids[::-1].copy(), u.vectors, u.item_vectors), "ascending"),
    (lambda u: UserVectors(u.user_ids, u.vectors[:, :3].copy(), u.item_vectors), "vectors are [3, 3]"),
    (lambda u: UserVectors(u.user_ids, np.full_like(u.vectors, np.nan), u.item_vectors), "finite"),
    (lambda u: UserVectors(u.user_ids - 5, u.vectors, u.item_vectors), ">= 1"),
])
def test_broken_user_tables_are_refused_naming_the_array(change, said):
    users = UserVectors.build(np.array([1, 2, 3]), np.eye(3, 4, dtype=np.float32), np.ones((6, 4), np.float32))
    with pytest.raises(ValueError, match=said.replace("[", r"\[").replace("]", r"\]")):
        change(users).to_bytes()


def test_exact_retrieval_returns_the_best_offerable_items_in_order(tmp_path):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(201, 8)).astype(np.float32)
    users = UserVectors.build(np.arange(1, 31), rng.normal(size=(30, 8)).astype(np.float32), items)
    path = tmp_path / "users.npz"
    path.write_bytes(users.to_bytes())
    users = UserVectors.load(path)
    offerable = np.ones(201, bool)
    offerable[[0, 5, 17]] = False
    retrieval = UserRetrieval(users, offerable, faiss_above_items=10_000)
    ids, scores = retrieval.top(users.vectors[:4], 12)
    for r in range(4):
        all_scores = users.item_vectors @ users.vectors[r]
        all_scores[~offerable] = -np.inf
        assert ids[r].tolist() == np.argsort(-all_scores, kind="stable")[:12].tolist()
        assert np.allclose(scores[r], all_scores[ids[r]], atol=1e-5)
    tiny = UserRetrieval(users, np.r_[False, True, True, np.zeros(198, bool)], faiss_above_items=10_000)
    assert sorted(tiny.top(users.vectors[:1], 5)[0][0].tolist()) == [-1, -1, -1, 1, 2]  # padded with -1


def test_faiss_retrieval_above_the_threshold_finds_almost_all_of_the_exact_list():
    """The approximate path a large catalogue takes, against the exact one: recall@10 measured on clustered
    vectors like a trained item table's (20,000 items, 200 users)."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32))
    items = (centres[rng.integers(0, 50, 20_001)] + 0.5 * rng.normal(size=(20_001, 32))).astype(np.float32)
    users = UserVectors.build(np.arange(1, 201), (centres[rng.integers(0, 50, 200)]
                                                  + 0.5 * rng.normal(size=(200, 32))).astype(np.float32), items)
    offerable = np.ones(20_001, bool)
    offerable[0] = False
    offerable[rng.integers(1, 20_001, 500)] = False
    exact = UserRetrieval(users, offerable, faiss_above_items=50_000)
    approximate = UserRetrieval(users, offerable, faiss_above_items=1_000)
    assert approximate.approximate and not exact.approximate
    want, _ = exact.top(users.vectors, 10)
    got, _ = approximate.top(users.vectors, 10)
    recall = np.mean([len(set(w) & set(g)) / 10 for w, g in zip(want.tolist(), got.tolist())])
    print(f"faiss HNSW recall@10 against exact: {recall:.3f} (20,000 items, 200 users)")
    assert recall >= 0.95
    assert offerable[got[got > 0]].all()
