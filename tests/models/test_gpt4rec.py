import numpy as np
import pytest
import torch

from pipelines.core.contract import left_pad
from pipelines.evaluate.protocol import evaluate
from pipelines.models.base import FitContext, training_examples
from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig, GPT4RecSettings, drop_kinds
from pipelines.models.popularity import PopularityRecommender, PopularitySettings

QUIET = FitContext(seed=0, progress=False)


def test_causal_and_padding_invariant():
    torch.manual_seed(0)
    model = GPT4Rec(GPT4RecConfig(n_items=30, dim=16, layers=2, heads=2, max_len=12, dropout=0.0)).eval()
    x = torch.tensor([[3, 7, 9, 11]])
    with torch.no_grad():
        states = model.hidden(x)
        changed = model.hidden(torch.tensor([[3, 7, 9, 29]]))
        assert torch.allclose(states[:, :3], changed[:, :3], atol=1e-6)  # the future does not leak back
        padded = model(torch.tensor([[0, 0, 0, 3, 7, 9, 11]]))
        assert torch.allclose(model(x), padded, atol=1e-5)  # left padding does not change the answer
        # nor any real position's state: training cuts each batch to its longest history on that ground
        assert torch.allclose(model.hidden(torch.tensor([[0, 0, 0, 3, 7, 9, 11]]))[:, -4:], states, atol=1e-5)
        items = model.item_vectors()  # the table training builds once per batch gives the same numbers
        assert torch.equal(model.logits(model.hidden(x, items=items), items), model.logits(states))


def test_training_examples_shift_by_one():
    inputs, targets = training_examples([np.array([4, 5, 6]), np.array([1])], max_len=4)
    assert inputs.tolist() == [[0, 0, 4, 5]] and targets.tolist() == [[0, 0, 5, 6]]


def test_loss_decreases_and_beats_popularity(cyclic_world):
    seqs = cyclic_world
    settings = GPT4RecSettings(dim=32, layers=1, heads=2, max_len=10, dropout=0.0, epochs=6, batch_size=32, lr=0.01)
    model, info = GPT4Rec.fit(seqs, settings, QUIET)
    losses = [row["loss"] for row in info["history"]]
    assert losses[-1] < losses[0] * 0.7
    learned = evaluate(model, seqs, k=10)
    baseline = evaluate(PopularityRecommender.fit(seqs, PopularitySettings(window_days=30), QUIET)[0], seqs, k=10)
    assert learned["hr_at_10"] > 0.9 > baseline["hr_at_10"] + 0.3


def test_save_load_round_trip(tmp_path):
    model = GPT4Rec(GPT4RecConfig(n_items=20, dim=16, layers=1, heads=2, max_len=8)).eval()
    model.save(tmp_path)
    again = GPT4Rec.load(tmp_path)
    x = torch.tensor(left_pad([np.array([1, 2, 3])], 8))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_prod2vec_dimension_mismatch_is_explained(cyclic_world):
    from pipelines.embed.prod2vec import ItemEmbeddings

    seqs = cyclic_world
    bad = ItemEmbeddings(vectors=np.zeros((41, 8), np.float32), known=np.ones(41, bool), info={})
    with pytest.raises(ValueError, match="prod2vec.dim"):
        GPT4Rec.fit(seqs, GPT4RecSettings(dim=16, epochs=1), FitContext(seed=0, progress=False, pretrained=bad))


def test_sampled_softmax_learns_too(cyclic_world):
    settings = GPT4RecSettings(dim=32, layers=1, heads=2, max_len=10, dropout=0.0, epochs=6, batch_size=32,
                               lr=0.01, loss="sampled", negatives=16)
    model, info = GPT4Rec.fit(cyclic_world, settings, QUIET)
    assert info["history"][-1]["loss"] < info["history"][0]["loss"]
    learned = evaluate(model, cyclic_world, k=10)
    assert learned["hr_at_10"] > 0.8


def make_kind_world(n_users: int = 400, n_items: int = 40, length: int = 8, seed: int = 0):
    """The step to the next item is set by the event kind of the current one (view: +1, purchase: +3):
    only a model that reads kinds can predict it."""
    from pipelines.data.sequences import EVENT_KIND_CODES, Sequences

    rng = np.random.default_rng(seed)
    view, purchase = EVENT_KIND_CODES["view"], EVENT_KIND_CODES["purchase"]
    items, kinds = [], []
    for _ in range(n_users):
        k = rng.choice([view, purchase], size=length).astype(np.int8)
        steps = np.where(k == view, 1, 3)
        start = rng.integers(0, n_items)
        items.append((start + np.concatenate([[0], np.cumsum(steps[:-1])])) % n_items + 1)
        kinds.append(k)
    times = [np.arange(length, dtype=np.float64) + u * 100 for u in range(n_users)]
    return Sequences(user_ids=np.arange(1, n_users + 1), items=items, times=times, n_items=n_items, kinds=kinds)


def _kind_model(**overrides) -> GPT4Rec:
    torch.manual_seed(0)
    model = GPT4Rec(GPT4RecConfig(**{"n_items": 30, "dim": 16, "layers": 2, "heads": 2, "max_len": 12,
                                     "dropout": 0.0, "event_kinds": 4, **overrides})).eval()
    with torch.no_grad():  # make the kind rows matter (init scale is small)
        model.kind_emb.weight[1:] *= 50
    return model


def test_event_kinds_change_the_output_and_none_means_unknown():
    model = _kind_model()
    x = torch.tensor([[3, 7, 9, 11]])
    with torch.no_grad():
        plain = model(x)
        assert torch.equal(plain, model(x, torch.zeros_like(x)))  # None == all unknown
        viewed = model(x, torch.tensor([[1, 1, 1, 1]]))
        bought = model(x, torch.tensor([[1, 1, 1, 4]]))
    assert not torch.allclose(plain, viewed, atol=1e-4) and not torch.allclose(viewed, bought, atol=1e-4)
    with pytest.raises(ValueError, match="event_kinds has shape"):
        model(x, torch.zeros(1, 3, dtype=torch.int64))


def test_causal_and_padding_invariant_with_kinds():
    model = _kind_model()
    x, k = torch.tensor([[3, 7, 9, 11]]), torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        states = model.hidden(x, k)
        later_kind = model.hidden(x, torch.tensor([[1, 2, 3, 1]]))
        assert torch.allclose(states[:, :3], later_kind[:, :3], atol=1e-6)  # a later kind does not leak back
        assert not torch.allclose(states[:, 3], later_kind[:, 3], atol=1e-4)
        padded = model(torch.tensor([[0, 0, 3, 7, 9, 11]]), torch.tensor([[0, 0, 1, 2, 3, 4]]))
        assert torch.allclose(model(x, k), padded, atol=1e-5)


def test_score_left_pads_kinds_like_ids():
    model = _kind_model()
    assert model.uses_event_kinds and not _plain_model().uses_event_kinds
    histories = [np.array([3, 7, 9, 11]), np.array([5])]
    kinds = [np.array([1, 2, 3, 4], np.int8), np.array([4], np.int8)]
    scores = model.score(histories, kinds=kinds)
    with torch.no_grad():
        first = model(torch.tensor([[3, 7, 9, 11]]), torch.tensor([[1, 2, 3, 4]]))
        second = model(torch.tensor([[5]]), torch.tensor([[4]]))
    assert np.allclose(scores[0], first[0].numpy(), atol=1e-5) and np.allclose(scores[1], second[0].numpy(), atol=1e-5)
    assert np.allclose(model.score(histories), model.score(histories, kinds=[np.zeros(4), np.zeros(1)]))
    with pytest.raises(ValueError, match="history 1 has 1 items but 2 event kinds"):
        model.score(histories, kinds=[kinds[0], np.array([1, 1])])


def _plain_model() -> GPT4Rec:
    return GPT4Rec(GPT4RecConfig(n_items=30, dim=16, layers=1, heads=2, max_len=12)).eval()


def test_configs_saved_without_event_kinds_still_load(tmp_path):
    import json

    model = _plain_model()
    model.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("event_kinds")  # as written before event kinds existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    again = GPT4Rec.load(tmp_path)
    assert again.config.event_kinds == 0 and again.kind_emb is None
    kinded = _kind_model()
    kinded.save(tmp_path / "k")
    assert GPT4Rec.load(tmp_path / "k").config.event_kinds == 4


def test_drop_kinds_blanks_about_the_given_share():
    kinds = torch.full((200, 50), 3, dtype=torch.int64)
    dropped = drop_kinds(kinds, 0.1, torch.Generator().manual_seed(0))
    share = float((dropped == 0).float().mean())
    assert 0.08 < share < 0.12 and set(dropped.unique().tolist()) == {0, 3}
    assert torch.equal(drop_kinds(kinds, 0.0, torch.Generator()), kinds)


def _kind_settings(**overrides) -> GPT4RecSettings:
    return GPT4RecSettings(dim=32, layers=1, heads=2, max_len=10, dropout=0.0, batch_size=32, lr=0.01, **overrides)


def test_training_with_kinds_learns_what_only_kinds_tell():
    seqs = make_kind_world()
    with_kinds, with_info = GPT4Rec.fit(seqs, _kind_settings(epochs=6, event_kind_dropout=0.0), QUIET)
    without, _ = GPT4Rec.fit(seqs, _kind_settings(epochs=6, use_event_kinds=False), QUIET)
    assert with_kinds.config.event_kinds == 4 and without.config.event_kinds == 0
    losses = [row["loss"] for row in with_info["history"]]
    assert losses[-1] < losses[0] * 0.7
    hr_with = evaluate(with_kinds, seqs, k=1)["hr_at_1"]
    hr_without = evaluate(without, seqs, k=1)["hr_at_1"]
    assert hr_with > 0.9 and hr_without < 0.7  # without kinds the step is a coin flip


def test_kind_dropout_is_applied_in_training():
    seqs = make_kind_world()
    kept, kept_info = GPT4Rec.fit(seqs, _kind_settings(epochs=4, event_kind_dropout=0.0), QUIET)
    blanked, blanked_info = GPT4Rec.fit(seqs, _kind_settings(epochs=4, event_kind_dropout=0.95), QUIET)
    # Almost every kind blanked: the model cannot lean on them (higher loss, worse hit rate).
    assert blanked_info["history"][-1]["loss"] > kept_info["history"][-1]["loss"] + 0.2
    assert evaluate(blanked, seqs, k=1)["hr_at_1"] < evaluate(kept, seqs, k=1)["hr_at_1"] - 0.2
