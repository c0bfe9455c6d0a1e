"""The next-item loss the neural sequence families share: full softmax, or sampled above a catalogue size.

Why sampled at scale: the full softmax costs one dot product per item per training position, so an
epoch grows with events x catalogue; at 100,000 products that is most of the training time. A few
thousand shared popularity-sampled negatives with the log q correction give nearly the same gradient
at a cost that does not grow with the catalogue. `loss: auto` keeps the full softmax up to
`sampled_above_items` items (every shipped world and Beauty) and samples above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

LossKind = Literal["auto", "full", "sampled"]


def resolved_loss(loss: LossKind, n_items: int, sampled_above_items: int) -> Literal["full", "sampled"]:
    """What `loss: auto` means for a catalogue of n_items; full and sampled stay as asked."""
    if loss == "auto":
        return "sampled" if n_items > sampled_above_items else "full"
    return loss


class NegativeSampler:
    """Shared negatives drawn in proportion to popularity^0.75 (word2vec's choice), with log q kept
    for the correction that makes sampled softmax an unbiased estimate of the full one."""

    def __init__(self, histories: list[np.ndarray], n_items: int, count: int, device: torch.device) -> None:
        import torch

        freq = np.bincount(np.concatenate(histories), minlength=n_items + 1).astype(np.float64) if histories else \
            np.ones(n_items + 1)
        freq[0] = 0.0
        weights = (freq + 1.0) ** 0.75  # unseen items can still be drawn
        weights[0] = 0.0
        self.probs = torch.tensor(weights / weights.sum(), dtype=torch.float32, device=device)
        self.count = count

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        ids = torch.multinomial(self.probs, self.count, replacement=True, generator=generator)
        return ids, torch.log(self.probs[ids] * self.count)


def sampled_softmax_loss(items: torch.Tensor, states: torch.Tensor, targets: torch.Tensor, sampler: NegativeSampler,
                         generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy over the target and shared sampled negatives (log q corrected, accidental hits masked)."""
    import torch
    import torch.nn.functional as F

    negatives, log_q = sampler.draw(generator)
    positive = (states * items[targets]).sum(-1, keepdim=True)
    negative = states @ items[negatives].T - log_q
    negative = negative.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=states.device))


class NextItemLoss:
    """Cross-entropy of each state's next item against the item table `items` (row = item id).

    Built once per fit from the family's `loss`, `negatives` and `sampled_above_items`; `kind` says
    which loss it resolved to (recorded with the run).
    """

    def __init__(self, loss: LossKind, negatives: int, sampled_above_items: int, histories: list[np.ndarray],
                 n_items: int, device: torch.device, generator: torch.Generator) -> None:
        self.kind = resolved_loss(loss, n_items, sampled_above_items)
        self.sampler = NegativeSampler(histories, n_items, negatives, device) if self.kind == "sampled" else None
        self.generator = generator

    def __call__(self, items: torch.Tensor, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.sampler is not None:
            return sampled_softmax_loss(items, states, targets, self.sampler, self.generator)
        return F.cross_entropy(states @ items.T, targets)
