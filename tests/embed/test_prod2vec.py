import numpy as np

from pipelines.core.config import GraphSettings, Prod2VecSettings
from pipelines.embed.prod2vec import ItemEmbeddings, train_prod2vec


def test_items_that_co_occur_end_up_close(tmp_path):
    rng = np.random.default_rng(0)
    # two communities: items 1-10 and 11-20 never share a history
    histories = [rng.permutation(np.arange(1, 11))[:5] for _ in range(200)]
    histories += [rng.permutation(np.arange(11, 21))[:5] for _ in range(200)]
    emb = train_prod2vec(histories, 20, GraphSettings(walks_per_node=20, walk_length=10),
                         Prod2VecSettings(dim=16, epochs=5, workers=1), seed=1)
    assert emb.known[1:].all() and not emb.known[0]
    # word2vec on a 20-item vocabulary shares one common direction: compare around the mean
    v = emb.vectors[1:] - emb.vectors[1:].mean(axis=0)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    top3 = np.argsort(-sims, axis=1)[:, :3]
    assert ((top3 < 10) == (np.arange(20) < 10)[:, None]).mean() >= 0.9  # neighbours from the same community
    assert {"graph_s", "walks_s", "word2vec_s"} <= set(emb.info)
    emb.save(tmp_path)
    again = ItemEmbeddings.load(tmp_path)
    assert np.allclose(again.vectors, emb.vectors) and again.info == emb.info


def test_skipgram_training_shows_each_epoch_and_leaves_no_callback_behind(capsys):
    import numpy as np

    from pipelines.embed.prod2vec import item_tokens, skipgram, train_skipgram

    corpus = item_tokens(30)[np.random.default_rng(0).integers(1, 31, (500, 8))].tolist()
    model = skipgram(corpus, dim=8, window=3, negative=5, min_count=1, workers=1, seed=0)
    train_skipgram(model, corpus, 3, "skipgram under test")
    err = capsys.readouterr().err
    assert "skipgram under test: 100%" in err and "3/3" in err
    assert not model.callbacks and model.epochs == 3
