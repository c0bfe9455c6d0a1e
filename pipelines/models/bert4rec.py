"""BERT4Rec: a bidirectional transformer trained to fill in masked items (Sun et al. 2019).

The seed names BERT; this family puts the masked-item (Cloze) objective on the same leaderboard as
the causal GPT4Rec. Training hides `mask_prob` of each history's items (at least one) behind a
[MASK] token and predicts them from both sides, with a softmax over every item; a history is scored
by appending [MASK] and ranking every item at that position. Positions count back from the most
recent event and padding is never attended to, so left padding does not change the answer and each
batch is cut to its longest history. The best epoch on the validation split is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from pipelines.core.contract import left_pad
from pipelines.data.sequences import Sequences
from pipelines.models.base import (
    FitContext,
    NextItemNetwork,
    SequenceModelSettings,
    fit_by_validation,
)
from pipelines.models.losses import NextItemLoss


class BERT4RecSettings(SequenceModelSettings):
    """The `bert4rec:` section of params.yaml."""

    heads: int = Field(2, ge=1)
    mask_prob: float = Field(0.2, gt=0, lt=1)


class BERT4Rec(nn.Module, NextItemNetwork):
    """The network, its Cloze training (`fit`) and its full-sort prediction (`score`)."""

    family = "bert4rec"
    settings_type = BERT4RecSettings

    def __init__(self, settings: BERT4RecSettings, n_items: int) -> None:
        super().__init__()
        if settings.dim % settings.heads:
            raise ValueError(f"bert4rec.dim ({settings.dim}) must be divisible by bert4rec.heads ({settings.heads})")
        self.settings, self.n_items = settings, n_items
        self.mask_id = n_items + 1
        dim = settings.dim
        self.item_emb = nn.Embedding(n_items + 2, dim, padding_idx=0)  # ids 1..n_items, then [MASK]
        self.pos_emb = nn.Embedding(settings.max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, settings.heads, 4 * dim, settings.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, settings.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(settings.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, length, dim) states; every real position sees every other real position."""
        length = input_ids.shape[1]
        positions = torch.arange(length - 1, -1, -1, device=input_ids.device).clamp(max=self.settings.max_len - 1)
        x = self.dropout(self.item_emb(input_ids) * (self.settings.dim ** 0.5) + self.pos_emb(positions))
        return self.norm(self.encoder(x, src_key_padding_mask=input_ids == 0))

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Scores of items 0..n_items ([MASK] is never an answer)."""
        return states @ self.item_emb.weight[: self.mask_id].T

    @classmethod
    def fit(cls, seqs: Sequences, s: BERT4RecSettings, ctx: FitContext) -> tuple[BERT4Rec, dict[str, Any]]:
        model, rng, device = cls.seeded(seqs, s, ctx)
        sequences = left_pad([h[-s.max_len:] for h in seqs.train() if len(h) >= 2], width=s.max_len)
        if not len(sequences):
            raise ValueError("no user has two or more training items: nothing to learn from")
        generator = torch.Generator(device=device).manual_seed(ctx.seed)
        next_item_loss = NextItemLoss(s.loss, s.negatives, s.sampled_above_items, seqs.train(), seqs.n_items, device,
                                      torch.Generator(device=device).manual_seed(ctx.seed + 1))

        def batch_loss(rows: np.ndarray) -> torch.Tensor:
            items = torch.from_numpy(sequences[rows]).to(device)
            items = items[:, -int((items != 0).sum(1).max()):]
            real = items != 0
            masked = (torch.rand(items.shape, generator=generator, device=device) < s.mask_prob) & real
            masked[:, -1] |= ~masked.any(1)  # at least one per row: the last item (always real)
            states = model.hidden(items.masked_fill(masked, model.mask_id))
            return next_item_loss(model.item_emb.weight[: model.mask_id], states[masked], items[masked])

        info = fit_by_validation(model, seqs, s, ctx, len(sequences), batch_loss, rng)
        return model, {**info, "softmax": next_item_loss.kind}

    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        keep = self.settings.max_len - 1  # and [MASK] last
        return self.score_last_state([np.append(h[-keep:], self.mask_id) for h in histories])
