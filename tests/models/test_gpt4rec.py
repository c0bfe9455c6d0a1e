import numpy as np
import pytest
import torch

from pipelines.config import GPT4RecSettings
from pipelines.evaluate.protocol import evaluate
from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig, GPT4RecRecommender, left_pad
from pipelines.models.popularity import PopularityRecommender
from pipelines.models.train import train_gpt4rec, training_examples


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


def test_training_examples_shift_by_one():
    inputs, targets = training_examples([np.array([4, 5, 6]), np.array([1])], max_len=4)
    assert inputs.tolist() == [[0, 0, 4, 5]] and targets.tolist() == [[0, 0, 5, 6]]


def test_loss_decreases_and_beats_popularity(cyclic_world):
    seqs = cyclic_world
    settings = GPT4RecSettings(dim=32, layers=1, heads=2, max_len=10, dropout=0.0, epochs=6, batch_size=32, lr=0.01)
    result = train_gpt4rec(seqs, settings, seed=0, progress=False)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0] * 0.7
    learned = evaluate(GPT4RecRecommender(result.model), seqs, k=10)
    baseline = evaluate(PopularityRecommender.fit(seqs, window_days=30), seqs, k=10)
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
        train_gpt4rec(seqs, GPT4RecSettings(dim=16, epochs=1), seed=0, pretrained=bad, progress=False)


def test_sampled_softmax_learns_too(cyclic_world):
    settings = GPT4RecSettings(dim=32, layers=1, heads=2, max_len=10, dropout=0.0, epochs=6, batch_size=32,
                               lr=0.01, loss="sampled", negatives=16)
    result = train_gpt4rec(cyclic_world, settings, seed=0, progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    learned = evaluate(GPT4RecRecommender(result.model), cyclic_world, k=10)
    assert learned["hr_at_10"] > 0.8
