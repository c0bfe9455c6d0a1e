"""Training loop for GPT4Rec: next-item cross-entropy at every position, full softmax.

Same code on CPU and CUDA. The best epoch on the validation split (NDCG@10) is kept, so the
test split is never looked at while training.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipelines.core.config import GPT4RecSettings
from pipelines.data.sequences import N_EVENT_KINDS, Sequences
from pipelines.embed.prod2vec import ItemEmbeddings
from pipelines.evaluate.protocol import evaluate
from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig, GPT4RecRecommender


@dataclass
class TrainResult:
    model: GPT4Rec
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    initialised_items: int = 0


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("gpt4rec.device=cuda was asked for but CUDA is not available on this machine")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def training_examples(histories: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and shifted targets, left-padded to max_len: the last max_len+1 items of each user."""
    usable = [h[-(max_len + 1):] for h in histories if len(h) >= 2]
    inputs = np.zeros((len(usable), max_len), dtype=np.int64)
    targets = np.zeros((len(usable), max_len), dtype=np.int64)
    for row, h in enumerate(usable):
        n = len(h) - 1
        inputs[row, max_len - n:] = h[:-1]
        targets[row, max_len - n:] = h[1:]
    return inputs, targets


def training_kinds(histories: list[np.ndarray], kinds: list[np.ndarray], max_len: int) -> np.ndarray:
    """Event kinds of the inputs of training_examples (same rows, same left padding)."""
    usable = [k[-(max_len + 1):] for h, k in zip(histories, kinds) if len(h) >= 2]
    out = np.zeros((len(usable), max_len), dtype=np.int64)
    for row, k in enumerate(usable):
        out[row, max_len - (len(k) - 1):] = k[:-1]
    return out


def drop_kinds(kinds: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Blank a share of event kinds (0 = unknown) so the model also serves clients that send none."""
    if rate <= 0:
        return kinds
    keep = torch.rand(kinds.shape, generator=generator, device=kinds.device) >= rate
    return kinds * keep


class NegativeSampler:
    """Shared negatives drawn in proportion to popularity^0.75 (word2vec's choice), with log q kept
    for the correction that makes sampled softmax an unbiased estimate of the full one."""

    def __init__(self, histories: list[np.ndarray], n_items: int, count: int, device: torch.device) -> None:
        freq = np.bincount(np.concatenate(histories), minlength=n_items + 1).astype(np.float64) if histories else \
            np.ones(n_items + 1)
        freq[0] = 0.0
        weights = (freq + 1.0) ** 0.75  # unseen items can still be drawn
        weights[0] = 0.0
        self.probs = torch.tensor(weights / weights.sum(), dtype=torch.float32, device=device)
        self.count = count

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.multinomial(self.probs, self.count, replacement=True, generator=generator)
        return ids, torch.log(self.probs[ids] * self.count)


def sampled_softmax_loss(model: GPT4Rec, states: torch.Tensor, targets: torch.Tensor, sampler: NegativeSampler,
                         generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy over the target and shared sampled negatives (log q corrected, accidental hits masked).

    Why: the full softmax costs one dot product per item per position; with catalogues of
    hundreds of thousands of products a few thousand shared negatives give nearly the same gradient.
    """
    negatives, log_q = sampler.draw(generator)
    items = model.item_vectors()
    positive = (states * items[targets]).sum(-1, keepdim=True)
    negative = states @ items[negatives].T - log_q
    negative = negative.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=states.device))


def train_gpt4rec(
    seqs: Sequences,
    s: GPT4RecSettings,
    seed: int,
    pretrained: ItemEmbeddings | None = None,
    progress: bool = True,
    item_tokens: np.ndarray | None = None,
) -> TrainResult:
    """Train GPT4Rec; `item_tokens` (see pipelines/data/item_features.py) adds item meta-info.

    With gpt4rec.use_event_kinds and kinds in `seqs`, each input token also carries its event kind;
    gpt4rec.event_kind_dropout of them are blanked per batch so kind-less requests stay in-distribution.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = resolve_device(s.device)
    meta_vocab = int(item_tokens.max()) + 1 if item_tokens is not None and item_tokens.size else 0
    meta_width = int(item_tokens.shape[1]) if meta_vocab else 0
    # Kinds only when asked for and the data has them (older sequence files have none).
    train_kinds = seqs.train_kinds() if s.use_event_kinds else None
    event_kinds = N_EVENT_KINDS if train_kinds is not None else 0
    model = GPT4Rec(GPT4RecConfig(seqs.n_items, s.dim, s.layers, s.heads, s.max_len, s.dropout, meta_vocab, meta_width,
                                  event_kinds))
    if meta_vocab:
        model.set_item_tokens(item_tokens)
    initialised = 0
    if pretrained is not None:
        if pretrained.vectors.shape[1] != s.dim:
            raise ValueError(
                f"prod2vec.dim ({pretrained.vectors.shape[1]}) must equal gpt4rec.dim ({s.dim}) "
                "to initialise GPT4Rec from Prod2Vec; set both to the same value or gpt4rec.init_from_prod2vec=false"
            )
        initialised = model.init_item_embeddings(pretrained.vectors, pretrained.known)
    model.to(device)
    inputs, targets = training_examples(seqs.train(), s.max_len)
    input_kinds = training_kinds(seqs.train(), train_kinds, s.max_len) if train_kinds is not None else None
    sampler = NegativeSampler(seqs.train(), seqs.n_items, s.negatives, device) if s.loss == "sampled" else None
    generator = torch.Generator(device=device).manual_seed(seed)
    if not len(inputs):
        raise ValueError("no user has two or more training items: nothing to learn from")
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    result = TrainResult(model=model, initialised_items=initialised)
    best_score, best_state, stale = -1.0, None, 0
    started = time.perf_counter()
    for epoch in range(1, s.epochs + 1):
        model.train()
        order = rng.permutation(len(inputs))
        total, batches = 0.0, 0
        bar = tqdm(range(0, len(order), s.batch_size), desc=f"gpt4rec epoch {epoch}/{s.epochs}",
                   disable=not progress, mininterval=2.0, leave=False)
        for start in bar:
            idx = order[start:start + s.batch_size]
            x = torch.from_numpy(inputs[idx]).to(device)
            y = torch.from_numpy(targets[idx]).to(device)
            kinds = None
            if input_kinds is not None:
                kinds = drop_kinds(torch.from_numpy(input_kinds[idx]).to(device), s.event_kind_dropout, generator)
            states = model.hidden(x, kinds)
            keep = y != 0
            if s.loss == "sampled":
                loss = sampled_softmax_loss(model, states[keep], y[keep], sampler, generator)
            else:
                loss = F.cross_entropy(model.logits(states[keep]), y[keep])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item()
            batches += 1
            bar.set_postfix(loss=f"{total / batches:.3f}")
        valid = evaluate(GPT4RecRecommender(model), seqs, split="valid", k=10)
        row = {"epoch": epoch, "loss": total / batches, "valid_hr_at_10": valid["hr_at_10"],
               "valid_ndcg_at_10": valid["ndcg_at_10"]}
        result.history.append(row)
        if progress:
            print(f"  epoch {epoch}: loss {row['loss']:.4f}  valid HR@10 {row['valid_hr_at_10']:.4f}  "
                  f"NDCG@10 {row['valid_ndcg_at_10']:.4f}", flush=True)
        if valid["ndcg_at_10"] > best_score:
            best_score, best_state, stale = valid["ndcg_at_10"], copy.deepcopy(model.state_dict()), 0
            result.best_epoch = epoch
        else:
            stale += 1
            if stale >= s.patience:
                break
        if s.time_budget_s and time.perf_counter() - started > s.time_budget_s:
            if progress:
                print(f"  time budget of {s.time_budget_s:.0f}s reached after epoch {epoch}", flush=True)
            break
    result.train_seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    return result
