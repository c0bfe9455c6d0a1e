"""Static popularity list: the baseline every model must beat (1mg's starting point).

Counts each item's interactions in the last `window_days` before the evaluation cut-off, so the
list reflects what is popular now, not over the whole history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipelines.core.config import ParamsSection
from pipelines.data.sequences import Sequences
from pipelines.models.base import Family, FitContext

COUNTS_FILE = "counts.npy"
SECONDS_PER_DAY = 86_400


class PopularitySettings(ParamsSection):
    """The `popularity:` section of params.yaml."""

    window_days: int = Field(30, ge=1)


class PopularityRecommender(Family):
    """Scores every item by its recent interaction count, whatever the user did."""

    family = "popularity"
    settings_type = PopularitySettings

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = counts.astype(np.float32)

    @classmethod
    def fit(cls, seqs: Sequences, s: PopularitySettings,
            ctx: FitContext) -> tuple[PopularityRecommender, dict[str, Any]]:
        """Counts up to the test cut-off (every user's history before their test target)."""
        horizon = seqs.cutoff_time("test") - s.window_days * SECONDS_PER_DAY
        counts = np.zeros(seqs.n_items + 1, dtype=np.float64)
        for items, times in zip(seqs.items, seqs.times):
            history, history_t = items[:-1], times[:-1]
            np.add.at(counts, history[history_t >= horizon], 1.0)
        # Ties (and items unseen in the window) are broken by all-time counts, scaled below 1.
        all_time = np.zeros_like(counts)
        for items in seqs.items:
            np.add.at(all_time, items[:-1], 1.0)
        counts += all_time / (all_time.max() + 1.0)
        counts[0] = 0.0
        return cls(counts), {}

    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), len(self.counts))).copy()

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / COUNTS_FILE, self.counts)
        (out_dir / "meta.json").write_text(json.dumps({"model": self.family, "n_items": len(self.counts) - 1}))

    @classmethod
    def load(cls, in_dir: Path) -> PopularityRecommender:
        return cls(np.load(in_dir / COUNTS_FILE))
