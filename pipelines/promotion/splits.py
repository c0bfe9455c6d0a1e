"""What the promotion gate may read, and when: validation to decide, the test split once, after the decision.

Selecting a model on the split its reported metrics come from overstates those metrics, so the gate
decides on the validation split (each user's second-to-last item, the same leave-one-out protocol
every model is scored by) and sees the test split only once its decision is recorded:

- `validation_view` is the data the gate decides on. Every evaluated user's last item (the test
  target) is replaced by padding, so no test target is even in memory while the gate decides.
- `SealedTestSplit` is the only way to the full data. It reads it through its `read` callable when
  `open` is given the recorded decision, and only once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from pipelines.data.sequences import MIN_EVALUATED_LENGTH, Sequences

if TYPE_CHECKING:
    from pipelines.promotion.gate import GateReport

PADDING = 0  # item id 0 and event kind 0: "nothing", never a target the protocol can hit


class TestSplitSealed(RuntimeError):
    """The test split was asked for before the gate's decision, or a second time."""

    __test__ = False  # not a pytest class, despite the name


def _without_last(values: np.ndarray) -> np.ndarray:
    """The same sequence with its last entry replaced by padding (built from the others, the last is not read)."""
    return np.append(values[:-1], np.array([PADDING], dtype=values.dtype))


def validation_view(seqs: Sequences) -> Sequences:
    """The sequences with each evaluated user's test target (and its event kind) replaced by padding.

    Training histories, validation histories and validation targets are unchanged, so
    `evaluate(..., split="valid")` and the cold-start slice give exactly what they give on `seqs`;
    a test evaluation of this view hits nothing.
    """
    def blank(rows: list[np.ndarray]) -> list[np.ndarray]:
        return [_without_last(r) if len(r) >= MIN_EVALUATED_LENGTH else r for r in rows]

    return replace(seqs, items=blank(seqs.items), kinds=None if seqs.kinds is None else blank(seqs.kinds))


@dataclass
class SealedTestSplit:
    """The full data, test targets included, handed out once and only for a recorded decision."""

    read: Callable[[], Sequences]
    opened_for: str | None = field(default=None, init=False)  # the challenger version it was opened for

    def open(self, decision: GateReport) -> Sequences:
        """The test split, read now; `decision` is the gate's recorded verdict the test figures will report on."""
        if self.opened_for is not None:
            raise TestSplitSealed(f"the test split was already read once (for the decision on "
                                  f"v{self.opened_for}); it is read once per gate")
        if not decision.reason:
            raise TestSplitSealed("the test split is sealed until the gate has decided; this decision has no reason")
        self.opened_for = decision.challenger_version
        return self.read()
