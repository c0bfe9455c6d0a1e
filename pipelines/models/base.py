"""What every model family implements, and the epoch loop the neural families share.

A family is one module, `pipelines/models/<name>.py`, holding one `Family` subclass whose `family`
is `<name>` and whose `settings_type` (declared in the same module) types the params.yaml section
`<name>`. The registry (families.py) finds it by that name; the validation of its section, the stage
`train_<name>`, its dvc.yaml stage and DAG task, and its leaderboard row follow. As in RecBole, the model owns its loss and its full-sort
prediction: `score` ranks every item after each history, which is what evaluation and serving read.
"""

from __future__ import annotations

import copy
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, Self, TypeVar, runtime_checkable

import numpy as np
from pydantic import Field
from tqdm import tqdm

from pipelines.core.config import ParamsSection
from pipelines.core.contract import left_pad
from pipelines.data.sequences import Sequences
from pipelines.evaluate.protocol import evaluate
from pipelines.models.losses import LossKind

if TYPE_CHECKING:  # torch is imported where a neural family runs, not where families are listed
    import torch

    from pipelines.embed.prod2vec import ItemEmbeddings
    from pipelines.models.user_vectors import UserVectors


class FitInput(StrEnum):
    """An input beside the sequences that a family may read; the training stage provides it."""

    PRETRAINED = "pretrained"  # Prod2Vec item vectors (artifacts/embeddings/prod2vec)
    ITEM_TOKENS = "item_tokens"  # item meta-info tokens (data/features; pipelines/data/item_features.py)


@dataclass(frozen=True)
class FitContext:
    """What a fit needs beyond its own params section."""

    seed: int
    k: int = 10  # evaluate.k: the cut-off at which a neural family picks its best epoch
    max_users: int | None = None  # evaluate.max_users: validation epochs rank a fixed sample of this many users
    progress: bool = True
    pretrained: ItemEmbeddings | None = None
    item_tokens: np.ndarray | None = None
    # Called with each epoch's row (epoch, loss, valid metrics) as soon as it is known: live tracking.
    on_epoch: Callable[[dict[str, float]], None] | None = None
    # False for a refit: train exactly `epochs` epochs and keep the last (its data holds the validation targets).
    validate: bool = True
    # The share of its batches the last epoch trains: a refit of a selection whose best epoch the time budget cut.
    last_epoch_fraction: float = 1.0


@runtime_checkable
class EmbedsUsers(Protocol):
    """A family whose state after a history scores every item as a dot product: that state is the user's vector,
    stored per user after training (users.npz) for the served home page (pipelines/models/user_vectors.py)."""

    def user_embeddings(self, seqs: Sequences, progress: bool = False) -> UserVectors: ...


class Family(ABC):
    """A recommender family: fit on sequences, score histories against every item, save and load."""

    family: ClassVar[str]  # = its module name = its params.yaml section
    settings_type: ClassVar[type[ParamsSection]]  # the class of that section (what `fit` receives)
    inputs: ClassVar[frozenset[FitInput]] = frozenset()  # what `fit` can read besides the sequences
    uses_event_kinds: bool = False  # True: evaluation passes kinds= to score()

    @property
    def name(self) -> str:
        """The leaderboard name (the evaluation protocol's `Recommender.name`)."""
        return self.family

    @classmethod
    def inputs_for(cls, settings: ParamsSection) -> frozenset[FitInput]:
        """The extra inputs `fit` will read with these settings (all it can, unless a family says less)."""
        return cls.inputs

    @classmethod
    @abstractmethod
    def fit(cls, seqs: Sequences, settings: Any, ctx: FitContext) -> tuple[Self, dict[str, Any]]:
        """Train on `seqs` without reading any test target (a neural family learns from the training
        split and picks its best epoch on the validation split); returns the model and what to record
        about the run (JSON-able)."""

    @abstractmethod
    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        """(len(histories), n_items + 1) scores of every item after each history; column 0 is padding."""

    @abstractmethod
    def save(self, path: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> Self: ...


# --------------------------------------------------------------------------- shared by the neural families

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
ModuleT = TypeVar("ModuleT", bound="torch.nn.Module")


def save_torch(module: torch.nn.Module, config: dict[str, Any], out_dir: Path) -> None:
    """A network as its weights (safetensors) and the config that rebuilds it (JSON)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, out_dir / WEIGHTS_FILE)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def load_torch(in_dir: Path, build: Callable[[dict[str, Any]], ModuleT]) -> ModuleT:
    """The network save_torch wrote: `build(config)` makes it, the weights are loaded; in eval mode."""
    from safetensors.torch import load_file

    module = build(json.loads((in_dir / CONFIG_FILE).read_text()))
    module.load_state_dict(load_file(in_dir / WEIGHTS_FILE))
    return module.eval()


class NextItemNetwork(Family):
    """A torch family built as `cls(settings, n_items)` whose last hidden state scores the next item.

    Subclasses (also `torch.nn.Module`s) give `hidden` (batch, length, dim) and `logits`; this gives their
    save/load (settings + weights) and the batched full-sort scoring of prepared inputs.
    """

    score_batch_size: ClassVar[int] = 512
    settings: Any
    n_items: int

    def save(self, path: Path) -> None:
        save_torch(self, {"n_items": self.n_items, "settings": self.settings.model_dump()}, path)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> Self:
        return load_torch(path, lambda config: cls(cls.settings_type(**config["settings"]), config["n_items"]))  # type: ignore[call-arg]

    @classmethod
    def seeded(cls, seqs: Sequences, s: Any, ctx: FitContext) -> tuple[Self, np.random.Generator, torch.device]:
        """A fresh network on its device, torch and numpy seeded from the run: same seed, same model."""
        import torch

        torch.manual_seed(ctx.seed)
        device = resolve_device(s.device, cls.family)
        return cls(s, seqs.n_items).to(device), np.random.default_rng(ctx.seed), device  # type: ignore[call-arg,attr-defined]

    def score_last_state(self, inputs: list[np.ndarray], length: int | None = None) -> np.ndarray:
        """Scores of every item from the state after each input (its last `length` items, left-padded),
        `score_batch_size` rows at a time."""
        import torch

        device = next(self.parameters()).device  # type: ignore[attr-defined]
        out = []
        with torch.no_grad():
            for i in range(0, len(inputs), self.score_batch_size):
                batch = torch.from_numpy(left_pad(inputs[i:i + self.score_batch_size], length)).to(device)
                out.append(self.logits(self.hidden(batch)[:, -1]).float().cpu().numpy())  # type: ignore[attr-defined]
        return np.concatenate(out) if out else np.zeros((0, self.n_items + 1), np.float32)



class SequenceModelSettings(ParamsSection):
    """What every neural sequence family trains with (the epoch loop below); each extends it."""

    dim: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    max_len: int = Field(50, ge=2, le=512)
    dropout: float = Field(0.2, ge=0, lt=1)
    # After picking the best epoch on validation, train a fresh model that many epochs on the training
    # histories plus each user's validation target, and use it: the most recent item is the most telling
    # one, and the test split stays unread. The pipeline keeps it off: its gate compares validation figures.
    refit: bool = False
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.003, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    patience: int = Field(3, ge=1)  # epochs without a better validation score before stopping
    time_budget_s: float = Field(0, ge=0)  # stop when training passes it, mid-epoch too; 0 = no budget
    # The next-item loss (pipelines/models/losses.py): softmax over every item, or over `negatives` shared
    # popularity-sampled items; auto = full up to `sampled_above_items` catalogue items, sampled above.
    loss: LossKind = "auto"
    negatives: int = Field(1024, ge=1)
    sampled_above_items: int = Field(20_000, ge=1)


class EpochSettings(Protocol):
    """The keys of a neural family's params section that the epoch loop reads."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patience: int
    time_budget_s: float
    refit: bool


def resolve_device(name: str, family: str) -> torch.device:
    """`<family>.device`: auto picks CUDA when there is one; asking for CUDA without one is an error."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{family}.device=cuda was asked for but CUDA is not available on this machine")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def training_examples(histories: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item targets, left-padded to max_len: the last max_len+1 items of each user."""
    usable = [h[-(max_len + 1):] for h in histories if len(h) >= 2]
    return left_pad([h[:-1] for h in usable], width=max_len), left_pad([h[1:] for h in usable], width=max_len)


def fit_by_validation(model: Any, seqs: Sequences, s: EpochSettings, ctx: FitContext, n_examples: int,
                      batch_loss: Callable[[np.ndarray], torch.Tensor], rng: np.random.Generator) -> dict[str, Any]:
    """Train `model` (a Family and a torch module) and keep its best epoch on the validation split.

    Each epoch visits the `n_examples` training rows in a new random order; `batch_loss(rows)` is the
    loss of one batch. After each epoch the validation split is ranked at `ctx.k`; training stops after
    `s.patience` epochs without a better NDCG, or when it crosses `s.time_budget_s`. The budget is checked
    after every batch, so one epoch over a large world cannot overrun it: the epoch it cuts is validated
    like any other and can be the best (`best_epoch_fraction` says how much of it trained). With `s.refit`
    the budget also holds the refit: at an epoch's end the best epoch so far times the mean epoch time, in
    an epoch the training time so far. Returns the best epoch, the epochs run, what stopped training
    (`stopped_by`: epochs, patience or time_budget), the seconds it took and the epoch-by-epoch history; the
    model ends on the CPU. With `ctx.validate` off (a refit) it trains exactly `s.epochs` epochs, the last
    one `ctx.last_epoch_fraction` of its batches, evaluates nothing and keeps the last.
    """
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    hr_key, ndcg_key = f"valid_hr_at_{ctx.k}", f"valid_ndcg_at_{ctx.k}"
    history: list[dict[str, float]] = []
    best_score, best_state, best_epoch, best_fraction, stale = -1.0, None, 0, 1.0, 0
    stopped_by = "epochs"
    started = time.perf_counter()
    train_seconds = 0.0  # epochs' training time without their validation: what a refit epoch costs
    for epoch in range(1, s.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        order = rng.permutation(n_examples)
        all_starts = range(0, len(order), s.batch_size)
        starts = all_starts
        if epoch == s.epochs and ctx.last_epoch_fraction < 1.0:
            starts = all_starts[:max(1, math.ceil(ctx.last_epoch_fraction * len(all_starts)))]
        total, batches, cut = 0.0, 0, False
        bar = tqdm(starts, desc=f"{model.family} epoch {epoch}/{s.epochs}", disable=not ctx.progress,
                   mininterval=2.0, leave=False)
        for start in bar:
            loss = batch_loss(order[start:start + s.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item()
            batches += 1
            bar.set_postfix(loss=f"{total / batches:.3f}")
            if s.time_budget_s and batches < len(starts):
                now = time.perf_counter()
                trained = train_seconds + now - epoch_started  # what a refit of this much training costs
                if now - started + (trained if s.refit else 0.0) > s.time_budget_s:
                    cut = True
                    break
        bar.close()
        model.eval()
        train_seconds += time.perf_counter() - epoch_started
        fraction = batches / len(all_starts)
        if not ctx.validate:
            history.append({"epoch": epoch, "loss": total / batches, "fraction": round(fraction, 4),
                            "elapsed_s": round(time.perf_counter() - started, 2)})
            best_epoch = epoch
            continue
        valid = evaluate(model, seqs, split="valid", k=ctx.k, max_users=ctx.max_users)
        row = {"epoch": epoch, "loss": total / batches, hr_key: valid[f"hr_at_{ctx.k}"],
               ndcg_key: valid[f"ndcg_at_{ctx.k}"], "fraction": round(fraction, 4),
               "elapsed_s": round(time.perf_counter() - started, 2)}
        history.append(row)
        if ctx.on_epoch is not None:
            ctx.on_epoch(row)
        if ctx.progress:
            print(f"  epoch {epoch}: loss {row['loss']:.4f}  valid HR@{ctx.k} {row[hr_key]:.4f}  "
                  f"NDCG@{ctx.k} {row[ndcg_key]:.4f}", flush=True)
        if row[ndcg_key] > best_score:
            best_score, best_state, best_epoch, stale = row[ndcg_key], copy.deepcopy(model.state_dict()), epoch, 0
            best_fraction = fraction
        else:
            stale += 1
            if stale >= s.patience:
                stopped_by = "patience"
                break
        reserved = best_epoch * train_seconds / epoch if s.refit else 0.0
        if cut or (s.time_budget_s and time.perf_counter() - started + reserved > s.time_budget_s
                   and epoch < s.epochs):
            stopped_by = "time_budget"
            if ctx.progress:
                where = f"{fraction:.0%} into epoch {epoch}" if cut else f"after epoch {epoch}"
                print(f"  time budget of {s.time_budget_s:.0f}s reached {where}", flush=True)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    return {"best_epoch": best_epoch, "best_epoch_fraction": round(best_fraction if ctx.validate else fraction, 4),
            "epochs_run": len(history), "stopped_by": stopped_by,
            "fit_seconds": round(time.perf_counter() - started, 2), "history": history}
