"""GRU4Rec: a recurrent network (GRU or LSTM cell) over a user's item sequence that predicts the next item.

1mg chose the transformer over an LSTM for training time and memory; this family measures that
choice on the same leaderboard (Hidasi et al. 2016, with the full-softmax loss of later work). The
cells have no bias terms, so a zero (padding) input leaves a zero state at zero: a history scores
the same however far it is left-padded, as with GPT4Rec, and each batch is cut to its longest
history. Output weights are tied to the item embeddings; training is next-item cross-entropy over
every item at every position, and the best epoch on the validation split is kept.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from pipelines.data.sequences import Sequences
from pipelines.models.base import (
    FitContext,
    NextItemNetwork,
    SequenceModelSettings,
    fit_by_validation,
    training_examples,
)
from pipelines.models.losses import NextItemLoss


class GRU4RecSettings(SequenceModelSettings):
    """The `gru4rec:` section of params.yaml."""

    layers: int = Field(1, ge=1)
    cell: Literal["gru", "lstm"] = "gru"


class GRU4Rec(nn.Module, NextItemNetwork):
    """The network, its training (`fit`) and its full-sort prediction (`score`)."""

    family = "gru4rec"
    settings_type = GRU4RecSettings

    def __init__(self, settings: GRU4RecSettings, n_items: int) -> None:
        super().__init__()
        self.settings, self.n_items = settings, n_items
        dim = settings.dim
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        cell = nn.GRU if settings.cell == "gru" else nn.LSTM
        self.rnn = cell(dim, dim, num_layers=settings.layers, bias=False, batch_first=True,
                        dropout=settings.dropout if settings.layers > 1 else 0.0)
        self.dropout = nn.Dropout(settings.dropout)
        self.out = nn.Linear(dim, dim, bias=False)  # state -> item-embedding space
        nn.init.normal_(self.item_emb.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, length, dim) states; state t has read items 0..t (padding leaves it at zero)."""
        states, _ = self.rnn(self.dropout(self.item_emb(input_ids)))
        return self.out(self.dropout(states))

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.item_emb.weight.T

    @classmethod
    def fit(cls, seqs: Sequences, s: GRU4RecSettings, ctx: FitContext) -> tuple[GRU4Rec, dict[str, Any]]:
        model, rng, device = cls.seeded(seqs, s, ctx)
        inputs, targets = training_examples(seqs.train(), s.max_len)
        if not len(inputs):
            raise ValueError("no user has two or more training items: nothing to learn from")

        next_item_loss = NextItemLoss(s.loss, s.negatives, s.sampled_above_items, seqs.train(), seqs.n_items, device,
                                      torch.Generator(device=device).manual_seed(ctx.seed))

        def batch_loss(rows: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(inputs[rows]).to(device)
            y = torch.from_numpy(targets[rows]).to(device)
            width = int((x != 0).sum(1).max())
            x, y = x[:, -width:], y[:, -width:]
            states = model.hidden(x)
            keep = y != 0
            return next_item_loss(model.item_emb.weight, states[keep], y[keep])

        info = fit_by_validation(model, seqs, s, ctx, len(inputs), batch_loss, rng)
        return model, {**info, "softmax": next_item_loss.kind}

    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        return self.score_last_state(histories, self.settings.max_len)
