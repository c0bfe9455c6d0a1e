import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import MetaProd2VecSettings, SimilarSettings, TfidfSettings
from pipelines.embed.evaluate import CosineSimilarity, Popularity, evaluate_similarity
from pipelines.embed.meta import item_fields, item_texts
from pipelines.embed.meta_prod2vec import meta_sentences, train_meta_prod2vec
from pipelines.embed.prod2vec import ItemEmbeddings
from pipelines.embed.similar import SimilarProducts
from pipelines.embed.text import train_tfidf


def _catalogue(n: int) -> pd.DataFrame:
    cls = ["alpha" if i <= n // 2 else "beta" for i in range(1, n + 1)]
    return pd.DataFrame({"item_id": np.arange(1, n + 1), "name": [f"item {c}" for c in cls],
                         "therapeutic_class": cls, "form": ["tablet"] * n})


def test_meta_prod2vec_learns_classes_and_embeds_cold_items():
    n = 40
    rng = np.random.default_rng(0)
    # walks stay inside a class; items 20 and 40 never appear (cold)
    walks = np.concatenate([rng.integers(1, 20, (300, 12)), rng.integers(21, 40, (300, 12))]).astype(np.int32)
    fields = item_fields(_catalogue(n), n, ["therapeutic_class", "form", "uses"])
    assert fields.fields == ["item_id", "therapeutic_class", "form"]  # "uses" is not a column: skipped
    settings = MetaProd2VecSettings(dim=16, epochs=3, workers=1)
    emb = train_meta_prod2vec(walks, fields, settings, seed=0)
    assert emb.known[1:].all() and not emb.known[0]
    assert emb.info["n_meta_only_items"] == 2 and emb.info["n_warm_items"] == 38
    v = emb.vectors / np.linalg.norm(emb.vectors, axis=1, keepdims=True).clip(1e-9)
    assert v[20] @ v[1:20].mean(0) > v[20] @ v[21:40].mean(0)  # the cold alpha item sits with the alphas
    assert v[40] @ v[21:40].mean(0) > v[40] @ v[1:20].mean(0)
    importance = emb.info["field_importance"]
    assert importance["therapeutic_class"] > importance["form"]  # the class tells the walks apart, the form not
    weights = emb.extra["field_weights"]
    assert np.allclose(weights[1:].sum(1), 1, atol=1e-5)
    assert weights[1, 0] == 1 and weights[20, 0] == 0  # an item with interactions is its id; a cold one its fields
    again = train_meta_prod2vec(walks, fields, settings, seed=0)
    assert np.array_equal(again.vectors, emb.vectors)  # one worker: fully reproducible


def test_meta_only_products_are_held_back_by_their_confidence():
    """A product known only by its meta scores `meta_confidence` times its cosine against any product
    with interactions; products with interactions are untouched."""
    n = 40
    rng = np.random.default_rng(0)
    walks = np.concatenate([rng.integers(1, 20, (300, 12)), rng.integers(21, 40, (300, 12))]).astype(np.int32)
    fields = item_fields(_catalogue(n), n, ["therapeutic_class", "form"])
    sure = train_meta_prod2vec(walks, fields, MetaProd2VecSettings(dim=16, epochs=2, workers=1), seed=0).vectors
    held = train_meta_prod2vec(walks, fields, MetaProd2VecSettings(dim=16, epochs=2, workers=1,
                                                                   meta_confidence=0.5), seed=0).vectors
    assert np.allclose(np.linalg.norm(held[1:], axis=1), 1, atol=1e-5)
    assert np.array_equal(held[1:20], sure[1:20])
    assert held[20] @ held[1] == pytest.approx(0.5 * (sure[20] @ sure[1]), abs=1e-5)


def test_meta_prior_moves_rare_products_toward_their_meta_and_needs_their_interactions():
    n = 40
    rng = np.random.default_rng(0)
    walks = np.concatenate([rng.integers(1, 20, (300, 12)), rng.integers(21, 40, (300, 12))]).astype(np.int32)
    fields = item_fields(_catalogue(n), n, ["therapeutic_class", "form"])
    interactions = np.full(n + 1, 100)
    interactions[[0, 5]] = [0, 1]  # item 5 is rare: one training interaction
    settings = MetaProd2VecSettings(dim=16, epochs=2, workers=1, meta_prior=3.0)
    emb = train_meta_prod2vec(walks, fields, settings, seed=0, interactions=interactions)
    weights = emb.extra["field_weights"]
    assert weights[5, 0] == pytest.approx(1 / 4) and weights[6, 0] == pytest.approx(100 / 103)
    assert np.allclose(weights[1:].sum(1), 1, atol=1e-5)
    own = train_meta_prod2vec(walks, fields, settings.model_copy(update={"meta_prior": 0.0}), seed=0).vectors
    moved = 1 - np.einsum("id,id->i", emb.vectors, own)  # 1 - cosine to the product's own vector
    assert moved[5] > 10 * moved[6] > 0  # the rare product leans on its meta, a frequent one barely
    with pytest.raises(ValueError, match="meta_prior=3.0 needs each item's training interactions"):
        train_meta_prod2vec(walks, fields, settings, seed=0)


def test_meta_sentences_swap_a_share_of_items_for_their_own_meta_tokens():
    fields = item_fields(_catalogue(10), 10, ["therapeutic_class"])
    walks = np.tile(np.arange(1, 11), (200, 1))
    sentences = meta_sentences(walks, fields, 0.5, np.random.default_rng(0))
    flat = np.array(sentences, dtype=object)
    swapped = np.char.startswith(flat.astype(str), "m:")
    assert 0.45 < swapped.mean() < 0.55
    assert set(flat[:, 0][swapped[:, 0]]) == {"m:therapeutic_class=alpha"}  # item 1 is an alpha
    assert set(flat[:, 9][swapped[:, 9]]) == {"m:therapeutic_class=beta"}
    assert (flat[~swapped] == walks.astype(str)[~swapped]).all()


def test_meta_prod2vec_rejects_walks_outside_the_catalogue():
    fields = item_fields(_catalogue(10), 10, ["therapeutic_class"])
    with pytest.raises(ValueError, match="outside 1..10"):
        train_meta_prod2vec(np.full((2, 5), 11, dtype=np.int32), fields, MetaProd2VecSettings(), seed=0)


def test_tfidf_is_sparse_and_cosine_finds_same_class():
    texts = item_texts(_catalogue(20), 20)
    assert texts[0] == "" and "alpha" in texts[1]
    emb = train_tfidf(texts, TfidfSettings())
    assert emb.vectors.shape[0] == 21 and not emb.known[0]
    ids, _ = SimilarProducts(emb, SimilarSettings()).query([1], k=3)
    assert all(i <= 10 for i in ids[0])


@pytest.mark.parametrize("exact_max_items", [10_000, 5])
def test_similar_products_exact_and_approximate_agree(exact_max_items, tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(201, 8)).astype(np.float32)
    known = np.ones(201, dtype=bool)
    known[0] = known[7] = False
    emb = ItemEmbeddings(vectors=vectors, known=known, info={"method": "random"})
    index = SimilarProducts(emb, SimilarSettings(exact_max_items=exact_max_items))
    assert index.approximate == (exact_max_items == 5)
    ids, cos = index.query([1, 2, 3], k=5)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit[[1, 2, 3]] @ unit.T
    sims[:, ~known] = -np.inf
    sims[[0, 1, 2], [1, 2, 3]] = -np.inf
    expected = np.argsort(-sims, axis=1)[:, :5]
    assert (ids == expected).mean() >= 0.9 and 7 not in ids
    assert np.all(np.diff(cos, axis=1) <= 1e-6)
    with pytest.raises(KeyError, match="no vector"):
        index.query([7])


def test_similarity_protocol_scores_cold_targets_only_with_a_vector():
    from pipelines.data.sequences import Sequences

    items = [np.array([1, 2, 3, 4]), np.array([2, 1, 3, 5]), np.array([3, 4, 1, 2])]
    seqs = Sequences(user_ids=np.arange(3), items=items, times=[np.arange(4.0)] * 3, n_items=5)
    vectors = np.eye(6, dtype=np.float32)
    vectors[5] = vectors[3]  # item 5 (never in training) looks like item 3
    known = np.ones(6, dtype=bool)
    known[0] = False
    with_vec = evaluate_similarity(CosineSimilarity("v", vectors, known), seqs, k=1, cold_max_interactions=0)
    known[5] = False
    without = evaluate_similarity(CosineSimilarity("v", vectors, known), seqs, k=1, cold_max_interactions=0)
    assert with_vec["n_cold_users"] == 1 and with_vec["cold_hr_at_1"] == 1.0 and without["cold_hr_at_1"] == 0.0
    assert evaluate_similarity(Popularity(seqs.train(), 5), seqs, k=1, cold_max_interactions=0)["cold_hr_at_1"] == 0.0
    # "unseen" does not move with the cold-start threshold; at 1, target 4 (once in training) is cold too
    assert with_vec["n_unseen_users"] == 1 and with_vec["unseen_hr_at_1"] == 1.0 and without["unseen_hr_at_1"] == 0.0
    wider = evaluate_similarity(CosineSimilarity("v", vectors, known), seqs, k=1, cold_max_interactions=1)
    assert wider["n_cold_users"] == 2 and wider["n_unseen_users"] == 1
    # warm is the rest: every evaluated user is warm or cold, and the slices add up to the whole
    assert wider["n_warm_users"] + wider["n_cold_users"] == wider["n_users"]
    assert wider["warm_hr_at_1"] * wider["n_warm_users"] + wider["cold_hr_at_1"] * wider["n_cold_users"] == \
        pytest.approx(wider["hr_at_1"] * wider["n_users"])


def test_text_encoder_embeds_offline_and_finetunes_on_pairs():
    from pipelines.core.config import TextEncoderSettings
    from pipelines.embed.text import train_text_encoder

    texts = ["", "paracetamol tablet for fever", "ibuprofen tablet for pain", "vitamin c capsule", "zinc capsule"]
    base = train_text_encoder(texts, TextEncoderSettings(device="cpu"), seed=0, progress=False)
    assert base.vectors.shape == (5, 384) and not base.known[0] and base.known[1:].all()
    assert np.allclose(np.linalg.norm(base.vectors[1:], axis=1), 1, atol=1e-4)
    pairs = np.array([[1, 2], [3, 4]])  # one contrastive step: enough to move the weights
    tuned = train_text_encoder(texts, TextEncoderSettings(device="cpu", finetune=True, batch_size=2, finetune_lr=1e-4),
                               seed=0, pairs=pairs, progress=False)
    assert tuned.info["finetuned"] and tuned.info["finetune_losses"]
    assert not np.allclose(tuned.vectors, base.vectors)
    with pytest.raises(ValueError, match="no co-occurring item pairs"):
        train_text_encoder(texts, TextEncoderSettings(finetune=True), seed=0)
