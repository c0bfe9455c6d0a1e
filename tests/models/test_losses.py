"""The shared next-item loss: auto switches to the sampled softmax above the catalogue size, full is exact."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.evaluate.protocol import evaluate
from pipelines.models.base import FitContext
from pipelines.models.bert4rec import BERT4Rec, BERT4RecSettings
from pipelines.models.gpt4rec import GPT4Rec, GPT4RecSettings
from pipelines.models.gru4rec import GRU4Rec, GRU4RecSettings
from pipelines.models.losses import NextItemLoss, resolved_loss

QUIET = FitContext(seed=0, progress=False)


@pytest.mark.parametrize(("loss", "n_items", "expected"), [
    ("auto", 20_000, "full"), ("auto", 20_001, "sampled"), ("full", 10**6, "full"), ("sampled", 10, "sampled"),
])
def test_auto_samples_only_above_the_catalogue_size(loss, n_items, expected):
    assert resolved_loss(loss, n_items, sampled_above_items=20_000) == expected


def test_full_is_the_cross_entropy_over_every_item_and_sampled_is_close_to_it():
    torch.manual_seed(0)
    items, states = torch.randn(51, 8), torch.randn(64, 8)
    targets = torch.randint(1, 51, (64,))
    histories = [np.arange(1, 51)]
    full = NextItemLoss("auto", 2048, 100, histories, 50, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert full.kind == "full"
    exact = F.cross_entropy(states @ items.T, targets)
    assert torch.allclose(full(items, states, targets), exact)
    sampled = NextItemLoss("auto", 2048, 10, histories, 50, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert sampled.kind == "sampled"
    # Uniform popularity, many negatives: the log q corrected estimate lands near the full softmax.
    assert abs(float(sampled(items, states, targets)) - float(exact)) < 0.15 * float(exact)


@pytest.mark.parametrize(("family", "settings"), [
    (GPT4Rec, GPT4RecSettings(dim=32, heads=2, max_len=10, dropout=0.0, epochs=5, batch_size=32, lr=0.01,
                              init_from_prod2vec=False, use_meta=False, use_event_kinds=False)),
    (GRU4Rec, GRU4RecSettings(dim=32, max_len=10, dropout=0.0, epochs=5, batch_size=32, lr=0.01)),
    (BERT4Rec, BERT4RecSettings(dim=32, heads=2, max_len=10, dropout=0.0, epochs=5, batch_size=32, lr=0.01)),
])
def test_every_sequence_family_learns_with_the_sampled_softmax_above_its_threshold(family, settings, cyclic_world):
    settings = settings.model_copy(update={"sampled_above_items": cyclic_world.n_items - 1, "negatives": 16})
    model, info = family.fit(cyclic_world, settings, QUIET)
    assert info["softmax"] == "sampled"
    assert evaluate(model, cyclic_world, k=10)["hr_at_10"] > 0.5
