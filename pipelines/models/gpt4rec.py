"""GPT4Rec: a causal transformer over a user's item sequence that predicts the next item.

Sessions are left-padded with 0. Positions count back from the most recent event, so a session
of 3 items looks the same to the model whether it is padded to 50 or not padded at all; that is
what lets the exported model take any length up to `max_len`. Output weights are tied to the
item embeddings (the scores are dot products with every item).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"


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


class GPT4Rec(nn.Module):
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
               last_only: bool = False) -> torch.Tensor:
        """(batch, length, dim) states; state t has seen items 0..t only (last_only: length 1).

        event_kinds: (batch, length) kind codes aligned with input_ids (0 = unknown); None = all
        unknown. Ignored by a model trained without kinds.
        """
        length = input_ids.shape[1]
        positions = torch.arange(length - 1, -1, -1, device=input_ids.device).clamp(max=self.config.max_len - 1)
        # Gather rows of the all-item table (the logits need it anyway; constant in an exported graph)
        # instead of averaging each position's meta tokens again: same numbers, less work per request.
        x = self.item_vectors()[input_ids]
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

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.item_vectors().T

    def forward(self, input_ids: torch.Tensor, event_kinds: torch.Tensor | None = None) -> torch.Tensor:
        """Next-item scores over all items (column 0 = padding) for the last position."""
        return self.logits(self.hidden(input_ids, event_kinds, last_only=True)[:, -1])

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, out_dir / WEIGHTS_FILE)
        (out_dir / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, in_dir: Path) -> GPT4Rec:
        # Configs saved before a field existed (e.g. event_kinds) load with that field's default.
        model = cls(GPT4RecConfig(**json.loads((in_dir / CONFIG_FILE).read_text())))
        model.load_state_dict(load_file(in_dir / WEIGHTS_FILE))
        return model.eval()


def left_pad(histories: list[np.ndarray], max_len: int) -> np.ndarray:
    """Most recent `max_len` items of each history, left-padded with 0 to a common length."""
    width = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = np.zeros((len(histories), width), dtype=np.int64)
    for row, h in enumerate(histories):
        tail = h[-width:]
        if len(tail):
            out[row, width - len(tail):] = tail
    return out


class GPT4RecRecommender:
    """Evaluation adapter: scores histories in batches with the trained network."""

    name = "gpt4rec"

    def __init__(self, model: GPT4Rec, batch_size: int = 512) -> None:
        self.model = model.eval()
        self.batch_size = batch_size

    @property
    def uses_event_kinds(self) -> bool:
        """True when the network reads event kinds: evaluate() then passes kinds= to score()."""
        return self.model.config.event_kinds > 0

    def save(self, out_dir: Path) -> None:
        self.model.save(out_dir)

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        """Scores of every item after each history; kinds (aligned with histories) only if the model reads them."""
        if kinds is not None and len(kinds) != len(histories):
            raise ValueError(f"got {len(kinds)} kind sequences for {len(histories)} histories")
        device = next(self.model.parameters()).device
        max_len = self.model.config.max_len
        out = []
        for i in range(0, len(histories), self.batch_size):
            chunk = histories[i:i + self.batch_size]
            batch = torch.from_numpy(left_pad(chunk, max_len)).to(device)
            batch_kinds = None
            if kinds is not None and self.uses_event_kinds:
                chunk_kinds = kinds[i:i + self.batch_size]
                for row, (h, k) in enumerate(zip(chunk, chunk_kinds)):
                    if len(h) != len(k):
                        raise ValueError(f"history {i + row} has {len(h)} items but {len(k)} event kinds")
                padded = left_pad([np.asarray(k, dtype=np.int64) for k in chunk_kinds], max_len)
                padded = np.pad(padded, ((0, 0), (batch.shape[1] - padded.shape[1], 0)))
                batch_kinds = torch.from_numpy(padded).to(device)
            out.append(self.model(batch, batch_kinds).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.n_items + 1), np.float32)
