"""BERT4Rec: the masked-item objective learns what comes next, [MASK] is never recommended, and left
padding does not change the scores."""

import numpy as np
import torch

from pipelines.evaluate.protocol import evaluate
from pipelines.models.base import FitContext
from pipelines.models.bert4rec import BERT4Rec, BERT4RecSettings

QUIET = FitContext(seed=0, progress=False)


def test_learns_the_next_item_from_masked_items(cyclic_world):
    settings = BERT4RecSettings(dim=32, layers=1, heads=2, max_len=10, dropout=0.0, mask_prob=0.3, epochs=8,
                                batch_size=32, lr=0.01)
    model, info = BERT4Rec.fit(cyclic_world, settings, QUIET)
    losses = [row["loss"] for row in info["history"]]
    assert losses[-1] < losses[0] * 0.7
    assert evaluate(model, cyclic_world, k=10)["hr_at_10"] > 0.8


def test_scores_every_item_but_mask_and_ignores_padding():
    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecSettings(dim=16, layers=2, heads=2, max_len=8, dropout=0.0), n_items=30).eval()
    scores = model.score([np.array([3, 7, 9]), np.arange(1, 20)])
    assert scores.shape == (2, 31)  # columns 0..n_items: [MASK] (id 31) is not an answer
    with torch.no_grad():
        asked = torch.tensor([[3, 7, 9, model.mask_id]])
        plain = model.logits(model.hidden(asked)[:, -1])
        padded = model.logits(model.hidden(torch.cat([torch.zeros(1, 4, dtype=torch.int64), asked], 1))[:, -1])
    assert torch.allclose(plain, padded, atol=1e-5)
    np.testing.assert_allclose(scores[:1], plain.numpy(), atol=1e-5)
