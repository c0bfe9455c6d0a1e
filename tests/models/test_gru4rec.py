"""GRU4Rec: learns what comes next, with either cell, and left padding never changes its scores."""

import numpy as np
import pytest
import torch

from pipelines.core.contract import left_pad
from pipelines.evaluate.protocol import evaluate
from pipelines.models.base import FitContext
from pipelines.models.gru4rec import GRU4Rec, GRU4RecSettings

QUIET = FitContext(seed=0, progress=False)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_learns_the_next_item_and_keeps_the_best_epoch(cell, cyclic_world):
    settings = GRU4RecSettings(dim=32, cell=cell, max_len=10, dropout=0.0, epochs=6, batch_size=32, lr=0.01)
    model, info = GRU4Rec.fit(cyclic_world, settings, QUIET)
    losses = [row["loss"] for row in info["history"]]
    assert losses[-1] < losses[0] * 0.7
    assert evaluate(model, cyclic_world, k=10)["hr_at_10"] > 0.9
    best = max(info["history"], key=lambda row: row["valid_ndcg_at_10"])
    assert info["best_epoch"] == best["epoch"] and not model.training


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_left_padding_does_not_change_the_scores(cell):
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecSettings(dim=16, layers=2, cell=cell, max_len=12, dropout=0.0), n_items=30).eval()
    history = [np.array([3, 7, 9, 11])]
    with torch.no_grad():
        plain = model.logits(model.hidden(torch.from_numpy(left_pad(history)))[:, -1])
        padded = model.logits(model.hidden(torch.from_numpy(left_pad(history, width=12)))[:, -1])
    assert torch.equal(plain, padded)  # bias-free cells: padding steps leave the state at exactly zero
    np.testing.assert_allclose(model.score(history + [np.arange(1, 12)])[:1], plain.numpy(), atol=1e-6)
