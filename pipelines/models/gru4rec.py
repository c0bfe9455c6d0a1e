"""GRU4Rec: a recurrent network (GRU or LSTM cell) over a user's item sequence that predicts the next item.

1mg chose the transformer over an LSTM for training time and memory; this family measures that
choice on the same leaderboard (Hidasi et al. 2016, with the full-softmax loss of later work). The
cells have no bias terms, so a zero (padding) input leaves a zero state at zero: a history scores
the same however far it is left-padded, as with GPT4Rec, and each batch is cut to its longest
history. Output weights are tied to the item embeddings; training is next-item cross-entropy over
every item at every position, and the best epoch on the validation split is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipelines.core.contract import left_pad
from pipelines.data.sequences import Sequences
from pipelines.models.base import (
    Family,
    FitContext,
    SequenceModelSettings,
    fit_by_validation,
    load_torch,
    resolve_device,
    save_torch,
    training_examples,
)


class GRU4RecSettings(SequenceModelSettings):
    """The `gru4rec:` section of params.yaml."""

    layers: int = Field(1, ge=1)
    cell: Literal["gru", "lstm"] = "gru"


class GRU4Rec(nn.Module, Family):
    """The network, its training (`fit`) and its full-sort prediction (`score`)."""

    family = "gru4rec"
    settings_type = GRU4RecSettings
    score_batch_size = 512

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
        torch.manual_seed(ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        device = resolve_device(s.device, cls.family)
        model = cls(s, seqs.n_items).to(device)
        inputs, targets = training_examples(seqs.train(), s.max_len)
        if not len(inputs):
            raise ValueError("no user has two or more training items: nothing to learn from")

        def batch_loss(rows: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(inputs[rows]).to(device)
            y = torch.from_numpy(targets[rows]).to(device)
            width = int((x != 0).sum(1).max())
            x, y = x[:, -width:], y[:, -width:]
            states = model.hidden(x)
            keep = y != 0
            return F.cross_entropy(model.logits(states[keep]), y[keep])

        return model, fit_by_validation(model, seqs, s, ctx, len(inputs), batch_loss, rng)

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        device = next(self.parameters()).device
        out = [self.logits(self.hidden(torch.from_numpy(left_pad(histories[i:i + self.score_batch_size],
                                                                 self.settings.max_len)).to(device))[:, -1])
               .float().cpu().numpy() for i in range(0, len(histories), self.score_batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.n_items + 1), np.float32)

    def save(self, out_dir: Path) -> None:
        save_torch(self, {"n_items": self.n_items, "settings": self.settings.model_dump()}, out_dir)

    @classmethod
    def load(cls, in_dir: Path) -> GRU4Rec:
        return load_torch(in_dir, lambda config: cls(GRU4RecSettings(**config["settings"]), config["n_items"]))
