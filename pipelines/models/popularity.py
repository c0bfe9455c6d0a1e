"""Static popularity list: the baseline every model must beat (1mg's starting point).

Counts each item's interactions in the last `window_days` before the evaluation cut-off, so the
list reflects what is popular now, not over the whole history.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines.data.sequences import Sequences

COUNTS_FILE = "counts.npy"
SECONDS_PER_DAY = 86_400


class PopularityRecommender:
    """Scores every item by its recent interaction count, whatever the user did."""

    name = "popularity"

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = counts.astype(np.float32)

    @classmethod
    def fit(cls, seqs: Sequences, window_days: int, split: str = "test") -> PopularityRecommender:
        cut = 1 if split == "test" else 2
        horizon = seqs.cutoff_time(split) - window_days * SECONDS_PER_DAY
        counts = np.zeros(seqs.n_items + 1, dtype=np.float64)
        for items, times in zip(seqs.items, seqs.times):
            history, history_t = items[:-cut], times[:-cut]
            np.add.at(counts, history[history_t >= horizon], 1.0)
        # Ties (and items unseen in the window) are broken by all-time counts, scaled below 1.
        all_time = np.zeros_like(counts)
        for items in seqs.items:
            np.add.at(all_time, items[:-cut], 1.0)
        counts += all_time / (all_time.max() + 1.0)
        counts[0] = 0.0
        return cls(counts)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), len(self.counts))).copy()

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / COUNTS_FILE, self.counts)
        (out_dir / "meta.json").write_text(json.dumps({"model": self.name, "n_items": len(self.counts) - 1}))

    @classmethod
    def load(cls, in_dir: Path) -> PopularityRecommender:
        return cls(np.load(in_dir / COUNTS_FILE))
