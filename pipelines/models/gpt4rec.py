"""GPT4Rec: a causal transformer over a user's item sequence that predicts the next item.

Sessions are left-padded with 0. Positions count back from the most recent event, so a session
of 3 items looks the same to the model whether it is padded to 50 or not padded at all; that is
what lets the exported model take any length up to `max_len`. Output weights are tied to the
item embeddings (the scores are dot products with every item).

Training: next-item cross-entropy at every position, over every item or shared popularity-sampled
negatives (pipelines/models/losses.py: `loss: auto` samples above `sampled_above_items`); the best epoch on the validation split is kept, so
the test split is never looked at. Same code on CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from tqdm import tqdm

from pipelines.core.contract import left_pad
from pipelines.data.sequences import N_EVENT_KINDS, Sequences
from pipelines.models.base import (
    Family,
    FitContext,
    FitInput,
    SequenceModelSettings,
    fit_by_validation,
    load_torch,
    resolve_device,
    save_torch,
    training_examples,
)
from pipelines.models.losses import NextItemLoss
from pipelines.models.user_vectors import UserVectors


class GPT4RecSettings(SequenceModelSettings):
    """The `gpt4rec:` section of params.yaml."""

    heads: int = Field(2, ge=1)
    init_from_prod2vec: bool = True
    use_meta: bool = True
    use_event_kinds: bool = True
    event_kind_dropout: float = Field(0.1, ge=0, lt=1)


@dataclass(frozen=True)
class GPT4RecConfig:
    n_items: int
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    meta_vocab: int = 0  # meta-info token vocabulary (0: item ids only)
    meta_width: int = 0  # meta tokens per item
    event_kinds: int = 0  # event kinds per token (view, click, ...; 0: no kind input); code 0 = unknown

    @classmethod
    def from_settings(cls, s: GPT4RecSettings, n_items: int, *, meta_vocab: int = 0, meta_width: int = 0,
                      event_kinds: int = 0) -> GPT4RecConfig:
        """The architecture params.yaml's gpt4rec section asks for, over this data (the one place it is built)."""
        return cls(n_items=n_items, dim=s.dim, layers=s.layers, heads=s.heads, max_len=s.max_len, dropout=s.dropout,
                   meta_vocab=meta_vocab, meta_width=meta_width, event_kinds=event_kinds)


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a GELU MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """last_only: return the last position only (all keys, one query): what serving reads."""
        b, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if last_only:  # halves the served cost at length 512 (reports/serve.md); same numbers
            x, q, mask = x[:, -1:], q[:, -1:], mask[..., -1:, :]
        q = q.reshape(b, q.shape[1], self.heads, dim // self.heads).transpose(1, 2)
        k, v = (t.reshape(b, length, self.heads, dim // self.heads).transpose(1, 2) for t in (k, v))
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.proj(attn.transpose(1, 2).reshape(b, q.shape[2], dim)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class GPT4Rec(nn.Module, Family):
    """The network, its training (`fit`) and its full-sort prediction (`score`)."""

    family = "gpt4rec"
    settings_type = GPT4RecSettings
    inputs = frozenset({FitInput.PRETRAINED, FitInput.ITEM_TOKENS})
    score_batch_size = 512

    def __init__(self, config: GPT4RecConfig) -> None:
        super().__init__()
        if config.dim % config.heads:
            raise ValueError(f"gpt4rec.dim ({config.dim}) must be divisible by gpt4rec.heads ({config.heads})")
        self.config = config
        self.item_emb = nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(config.dim, config.heads, config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.meta_emb = nn.Embedding(config.meta_vocab, config.dim, padding_idx=0) if config.meta_vocab else None
        # Code 0 (unknown / padding) adds nothing, so a client that sends no kinds gets the plain model.
        self.kind_emb = (
            nn.Embedding(config.event_kinds + 1, config.dim, padding_idx=0) if config.event_kinds else None
        )
        # Each item's meta tokens travel with the model (and into the ONNX graph).
        self.register_buffer("item_tokens", torch.zeros(config.n_items + 1, config.meta_width, dtype=torch.int64))
        if self.meta_emb is not None:
            nn.init.normal_(self.meta_emb.weight, std=0.02)
        if self.kind_emb is not None:
            nn.init.normal_(self.kind_emb.weight, std=0.02)
            with torch.no_grad():
                self.kind_emb.weight[0].zero_()
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def init_item_embeddings(self, vectors: np.ndarray, known: np.ndarray) -> int:
        """Start from pretrained item vectors (e.g. Prod2Vec), rescaled to this model's init scale."""
        if vectors.shape != tuple(self.item_emb.weight.shape):
            raise ValueError(f"pretrained vectors have shape {vectors.shape}, model expects {tuple(self.item_emb.weight.shape)}")
        rows = np.flatnonzero(known)
        rows = rows[rows > 0]
        if not len(rows):
            return 0
        chosen = torch.from_numpy(vectors[rows]).float()
        chosen = chosen / chosen.std() * 0.02 * 5  # a little above random init: the prior should matter
        with torch.no_grad():
            self.item_emb.weight[torch.from_numpy(rows)] = chosen
        return len(rows)

    def set_item_tokens(self, tokens: np.ndarray) -> None:
        if tokens.shape != tuple(self.item_tokens.shape):
            raise ValueError(f"item meta tokens have shape {tokens.shape}, model expects {tuple(self.item_tokens.shape)}")
        self.item_tokens.copy_(torch.from_numpy(tokens))

    def item_vectors(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Item id embedding plus the mean of its meta-token embeddings (all items when ids is None)."""
        base = self.item_emb.weight if ids is None else self.item_emb(ids)
        if self.meta_emb is None:
            return base
        tokens = self.item_tokens if ids is None else self.item_tokens[ids]
        present = (tokens != 0).unsqueeze(-1).to(base.dtype)
        meta = (self.meta_emb(tokens) * present).sum(-2) / present.sum(-2).clamp(min=1.0)
        return base + meta

    def hidden(self, input_ids: torch.Tensor, event_kinds: torch.Tensor | None = None,
               last_only: bool = False, items: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, length, dim) states; state t has seen items 0..t only (last_only: length 1).

        event_kinds: (batch, length) kind codes aligned with input_ids (0 = unknown); None = all
        unknown. Ignored by a model trained without kinds. items: `item_vectors()`, when the caller
        already has it (training builds the table once per batch for the inputs and the logits).
        """
        length = input_ids.shape[1]
        positions = torch.arange(length - 1, -1, -1, device=input_ids.device).clamp(max=self.config.max_len - 1)
        # Gather rows of the all-item table (the logits need it anyway; constant in an exported graph)
        # instead of averaging each position's meta tokens again: same numbers, less work per request.
        x = (self.item_vectors() if items is None else items)[input_ids]
        if self.kind_emb is not None and event_kinds is not None:
            if event_kinds.shape != input_ids.shape:
                raise ValueError(f"event_kinds has shape {tuple(event_kinds.shape)}, "
                                 f"input_ids has {tuple(input_ids.shape)}: they must match")
            x = x + self.kind_emb(event_kinds)
        x = x * (self.config.dim**0.5) + self.pos_emb(positions)
        x = self.dropout(x)
        valid = input_ids != 0
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=input_ids.device)
        # Attend to earlier real items; a padding position attends to itself so no row is empty.
        mask = (causal & valid[:, None, None, :]) | eye
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only and i == len(self.blocks) - 1)
        return self.norm(x)

    def logits(self, states: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        return states @ (self.item_vectors() if items is None else items).T

    def forward(self, input_ids: torch.Tensor, event_kinds: torch.Tensor | None = None) -> torch.Tensor:
        """Next-item scores over all items (column 0 = padding) for the last position."""
        return self.logits(self.hidden(input_ids, event_kinds, last_only=True)[:, -1])

    @property
    def uses_event_kinds(self) -> bool:
        """True when the network reads event kinds: evaluate() then passes kinds= to score()."""
        return self.config.event_kinds > 0

    @classmethod
    def inputs_for(cls, settings: GPT4RecSettings) -> frozenset[FitInput]:
        return frozenset({*([FitInput.PRETRAINED] if settings.init_from_prod2vec else []),
                          *([FitInput.ITEM_TOKENS] if settings.use_meta else [])})

    @classmethod
    def fit(cls, seqs: Sequences, s: GPT4RecSettings, ctx: FitContext) -> tuple[GPT4Rec, dict[str, Any]]:
        """Train on `seqs`; `ctx.item_tokens` (pipelines/data/item_features.py) adds item meta-info.

        With gpt4rec.use_event_kinds and kinds in `seqs`, each input token also carries its event kind;
        gpt4rec.event_kind_dropout of them are blanked per batch so kind-less requests stay in-distribution.
        """
        torch.manual_seed(ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        device = resolve_device(s.device, cls.family)
        item_tokens = ctx.item_tokens if s.use_meta else None
        pretrained = ctx.pretrained if s.init_from_prod2vec else None
        meta_vocab = int(item_tokens.max()) + 1 if item_tokens is not None and item_tokens.size else 0
        meta_width = int(item_tokens.shape[1]) if meta_vocab else 0
        # Kinds only when asked for and the data has them (older sequence files have none).
        train_kinds = seqs.train_kinds() if s.use_event_kinds else None
        event_kinds = N_EVENT_KINDS if train_kinds is not None else 0
        model = cls(GPT4RecConfig.from_settings(s, seqs.n_items, meta_vocab=meta_vocab, meta_width=meta_width,
                                                event_kinds=event_kinds))
        if meta_vocab:
            model.set_item_tokens(item_tokens)
        initialised = 0
        if pretrained is not None:
            if pretrained.vectors.shape[1] != s.dim:
                raise ValueError(
                    f"prod2vec.dim ({pretrained.vectors.shape[1]}) must equal gpt4rec.dim ({s.dim}) to initialise "
                    "GPT4Rec from Prod2Vec; set both to the same value or gpt4rec.init_from_prod2vec=false"
                )
            initialised = model.init_item_embeddings(pretrained.vectors, pretrained.known)
        model.to(device)
        inputs, targets = training_examples(seqs.train(), s.max_len)
        input_kinds = training_kinds(seqs.train(), train_kinds, s.max_len) if train_kinds is not None else None
        generator = torch.Generator(device=device).manual_seed(ctx.seed)
        next_item_loss = NextItemLoss(s.loss, s.negatives, s.sampled_above_items, seqs.train(), seqs.n_items, device,
                                      generator)
        if not len(inputs):
            raise ValueError("no user has two or more training items: nothing to learn from")

        def batch_loss(rows: np.ndarray) -> torch.Tensor:
            # Cut to the batch's longest history: positions count back from the end, so the left
            # padding dropped here changes no state, only the work.
            width = max(1, int((inputs[rows] != 0).sum(1).max()))
            x = torch.from_numpy(inputs[rows, -width:]).to(device)
            y = torch.from_numpy(targets[rows, -width:]).to(device)
            kinds = None
            if input_kinds is not None:
                kinds = drop_kinds(torch.from_numpy(input_kinds[rows, -width:]).to(device), s.event_kind_dropout,
                                   generator)
            items = model.item_vectors()
            states = model.hidden(x, kinds, items=items)
            keep = y != 0
            return next_item_loss(items, states[keep], y[keep])

        info = fit_by_validation(model, seqs, s, ctx, len(inputs), batch_loss, rng)
        return model, {**info, "initialised_items": initialised, "event_kinds": model.config.event_kinds,
                       "softmax": next_item_loss.kind}

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        """Scores of every item after each history; kinds (aligned with histories) only if the model reads them."""
        if kinds is not None and len(kinds) != len(histories):
            raise ValueError(f"got {len(kinds)} kind sequences for {len(histories)} histories")
        device = next(self.parameters()).device
        max_len = self.config.max_len
        out = []
        for i in range(0, len(histories), self.score_batch_size):
            chunk = histories[i:i + self.score_batch_size]
            batch = torch.from_numpy(left_pad(chunk, max_len)).to(device)
            batch_kinds = None
            if kinds is not None and self.uses_event_kinds:
                chunk_kinds = kinds[i:i + self.score_batch_size]
                for row, (h, k) in enumerate(zip(chunk, chunk_kinds)):
                    if len(h) != len(k):
                        raise ValueError(f"history {i + row} has {len(h)} items but {len(k)} event kinds")
                padded = left_pad([np.asarray(k, dtype=np.int64) for k in chunk_kinds], max_len, width=batch.shape[1])
                batch_kinds = torch.from_numpy(padded).to(device)
            out.append(self(batch, batch_kinds).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.config.n_items + 1), np.float32)

    @torch.no_grad()
    def user_embeddings(self, seqs: Sequences, progress: bool = False) -> UserVectors:
        """Each user's state after their whole history (kinds too, if the model reads them), with the item
        table it scores against: state @ item_vectors.T are the scores `score` gives that history."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        kinds = seqs.kinds if self.uses_event_kinds else None
        states = []
        for i in tqdm(range(0, len(seqs.items), self.score_batch_size), desc="user vectors", unit="batch",
                      disable=not progress, mininterval=2.0):
            chunk = seqs.items[i:i + self.score_batch_size]
            batch = torch.from_numpy(left_pad(chunk, self.config.max_len)).to(device)
            batch_kinds = None
            if kinds is not None:
                padded = left_pad(kinds[i:i + self.score_batch_size], self.config.max_len, width=batch.shape[1])
                batch_kinds = torch.from_numpy(padded).to(device)
            states.append(self.hidden(batch, batch_kinds, last_only=True)[:, -1].float().cpu().numpy())
        self.train(was_training)
        dim = self.config.dim
        vectors = np.concatenate(states) if states else np.zeros((0, dim), np.float32)
        return UserVectors.build(seqs.user_ids, vectors, self.item_vectors().float().cpu().numpy())

    def save(self, out_dir: Path) -> None:
        save_torch(self, asdict(self.config), out_dir)

    @classmethod
    def load(cls, in_dir: Path) -> GPT4Rec:
        # Configs saved before a field existed (e.g. event_kinds) load with that field's default.
        return load_torch(in_dir, lambda config: cls(GPT4RecConfig(**config)))



def training_kinds(histories: list[np.ndarray], kinds: list[np.ndarray], max_len: int) -> np.ndarray:
    """Event kinds of the inputs of training_examples (same rows, same left padding)."""
    usable = [k[-(max_len + 1):] for h, k in zip(histories, kinds) if len(h) >= 2]
    return left_pad([k[:-1] for k in usable], width=max_len)


def drop_kinds(kinds: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Blank a share of event kinds (0 = unknown) so the model also serves clients that send none."""
    if rate <= 0:
        return kinds
    keep = torch.rand(kinds.shape, generator=generator, device=kinds.device) >= rate
    return kinds * keep
