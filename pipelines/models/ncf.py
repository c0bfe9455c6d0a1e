"""Neural collaborative filtering (NeuMF: a GMF and an MLP tower), trained with sampled negatives.

The user side is encoded from the user's items (the mean of their embeddings, as in FISM) rather
than a per-user id, so a brand-new session is scored the same way as a training user; that is
what an online pharmacy with many anonymous sessions needs. Training: for each user, a random
prefix of the training history predicts its next item against `negatives` random items (BCE).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from tqdm import tqdm

from pipelines.core.config import ParamsSection
from pipelines.core.contract import left_pad
from pipelines.data.sequences import Sequences
from pipelines.models.base import Family, FitContext, load_torch, save_torch


class NCFSettings(ParamsSection):
    """The `ncf:` section of params.yaml."""

    dim: int = Field(32, ge=2)
    hidden: int = Field(64, ge=2)
    max_len: int = Field(50, ge=1)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.003, gt=0)
    negatives: int = Field(8, ge=1)
    samples_per_user: int = Field(4, ge=1)
    time_budget_s: float = Field(0, ge=0)  # stop when training passes it, mid-epoch too; 0 = no budget


@dataclass(frozen=True)
class NCFConfig:
    n_items: int
    dim: int = 32
    hidden: int = 64
    max_len: int = 50


class NeuMF(nn.Module):
    def __init__(self, c: NCFConfig) -> None:
        super().__init__()
        self.config = c
        self.gmf_items = nn.Embedding(c.n_items + 1, c.dim, padding_idx=0)
        self.mlp_items = nn.Embedding(c.n_items + 1, c.dim, padding_idx=0)
        self.user_in = nn.Linear(c.dim, c.hidden, bias=False)  # first MLP layer, split into
        self.item_in = nn.Linear(c.dim, c.hidden)  # user and item halves so all-item scoring is cheap
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(c.hidden, c.hidden // 2), nn.ReLU())
        self.out = nn.Linear(c.dim + c.hidden // 2, 1)
        for emb in (self.gmf_items, self.mlp_items):
            nn.init.normal_(emb.weight, std=0.05)

    def users(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean item embedding of each padded history, for both towers."""
        mask = (history != 0).unsqueeze(-1).float()
        count = mask.sum(1).clamp(min=1.0)
        return (self.gmf_items(history) * mask).sum(1) / count, (self.mlp_items(history) * mask).sum(1) / count

    def forward(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits for (batch, n) candidate items."""
        gmf_user, mlp_user = self.users(history)
        gmf = gmf_user.unsqueeze(1) * self.gmf_items(items)
        mlp = self.mlp(self.user_in(mlp_user).unsqueeze(1) + self.item_in(self.mlp_items(items)))
        return self.out(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)

    @torch.no_grad()
    def score_all(self, history: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        """(batch, n_items + 1) logits; the MLP runs over every item in user chunks."""
        gmf_user, mlp_user = self.users(history)
        gmf_w, gmf_b = self.out.weight[0, : self.config.dim], self.out.bias
        mlp_w = self.out.weight[0, self.config.dim:]
        item_part = self.item_in(self.mlp_items.weight)  # (N, hidden)
        out = (gmf_user * gmf_w) @ self.gmf_items.weight.T + gmf_b
        for start in range(0, len(history), chunk):
            user_part = self.user_in(mlp_user[start:start + chunk]).unsqueeze(1)  # (c, 1, hidden)
            out[start:start + chunk] += self.mlp(user_part + item_part.unsqueeze(0)) @ mlp_w
        return out


class NCFRecommender(Family):
    family = "ncf"
    settings_type = NCFSettings

    def __init__(self, model: NeuMF) -> None:
        self.model = model.eval()

    @classmethod
    def fit(cls, seqs: Sequences, s: NCFSettings, ctx: FitContext) -> tuple[NCFRecommender, dict[str, Any]]:
        """Returns the model, the mean loss of each epoch, what stopped it (`stopped_by`: epochs or
        time_budget) and how many epochs it trained (a fraction when the budget cut one)."""
        torch.manual_seed(ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        n_items = seqs.n_items
        usable = [h for h in seqs.train() if len(h) >= 2]
        if not usable:
            raise ValueError("no user has two or more training items: nothing for NCF to learn from")
        model = NeuMF(NCFConfig(n_items, s.dim, s.hidden, s.max_len))
        optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
        losses: list[float] = []
        started, epochs_trained = time.perf_counter(), float(s.epochs)
        for epoch in range(s.epochs):
            model.train()
            # Several random (prefix → next item) examples per user per epoch.
            users = np.repeat(np.arange(len(usable)), s.samples_per_user)
            rng.shuffle(users)
            total, batches = 0.0, 0
            starts = range(0, len(users), s.batch_size)
            for start in tqdm(starts, desc=f"ncf epoch {epoch + 1}/{s.epochs}",
                              disable=not ctx.progress, leave=False, mininterval=2.0):
                picked = [usable[u] for u in users[start:start + s.batch_size]]
                cut = [int(rng.integers(1, len(h))) for h in picked]
                history = torch.from_numpy(left_pad([h[:c] for h, c in zip(picked, cut)], s.max_len))
                positives = torch.tensor([h[c] for h, c in zip(picked, cut)]).unsqueeze(1)
                negatives = torch.from_numpy(rng.integers(1, n_items + 1, (len(picked), s.negatives)))
                candidates = torch.cat([positives, negatives], dim=1)
                labels = torch.zeros(candidates.shape)
                labels[:, 0] = 1.0
                loss = F.binary_cross_entropy_with_logits(model(history, candidates), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
                batches += 1
                if s.time_budget_s and time.perf_counter() - started > s.time_budget_s:
                    epochs_trained = epoch + batches / len(starts)
                    break
            losses.append(total / max(batches, 1))
            if epochs_trained < s.epochs:
                if ctx.progress:
                    print(f"  time budget of {s.time_budget_s:.0f}s reached in epoch {epoch + 1}", flush=True)
                break
        # Derived, not set at the cut: a budget that runs out on the very last batch still trained every epoch.
        stopped_by = "time_budget" if epochs_trained < s.epochs else "epochs"
        return cls(model.eval()), {"losses": [round(x, 4) for x in losses], "stopped_by": stopped_by,
                                   "epochs_trained": round(epochs_trained, 4)}

    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        batch = torch.from_numpy(left_pad(histories, self.model.config.max_len))
        return self.model.score_all(batch).numpy()

    def save(self, out_dir: Path) -> None:
        save_torch(self.model, asdict(self.model.config), out_dir)

    @classmethod
    def load(cls, in_dir: Path) -> NCFRecommender:
        return cls(load_torch(in_dir, lambda config: NeuMF(NCFConfig(**config))))
