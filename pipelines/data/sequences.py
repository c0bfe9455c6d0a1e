"""User interaction sequences and the leave-one-out split every model is scored on.

One token per (user, item): the first time the user touched the item, in time order. That is
the shape of the public benchmarks (each user-item pair once) and keeps "rank against all items
with the user's seen items masked" meaningful. For each user the last item is the test target,
the one before it the validation target, the rest is training history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SEQUENCES_FILE = "sequences.parquet"
META_FILE = "meta.json"
MIN_EVALUATED_LENGTH = 3  # a user needs train history + validation + test targets


@dataclass(frozen=True)
class Sequences:
    """Per-user item sequences (dense item ids 1..n_items) with the times they happened."""

    user_ids: np.ndarray
    items: list[np.ndarray]
    times: list[np.ndarray]  # seconds since epoch, float64
    n_items: int

    def __len__(self) -> int:
        return len(self.items)

    def train(self) -> list[np.ndarray]:
        """Histories the models learn from: everything but the validation and test targets."""
        return [s[:-2] if len(s) >= MIN_EVALUATED_LENGTH else s for s in self.items]

    def evaluation(self, split: str = "test") -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(histories, targets, row index) for users long enough to be evaluated."""
        if split not in ("test", "valid"):
            raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
        cut = 1 if split == "test" else 2
        rows = np.array([i for i, s in enumerate(self.items) if len(s) >= MIN_EVALUATED_LENGTH], dtype=np.int64)
        histories = [self.items[i][:-cut] for i in rows]
        targets = np.array([self.items[i][-cut] for i in rows], dtype=np.int64)
        return histories, targets, rows

    def cutoff_time(self, split: str = "test") -> float:
        """Latest time a model may learn from when predicting `split` (for time-window baselines)."""
        cut = 1 if split == "test" else 2
        return max(float(t[:-cut].max()) for t in self.times if len(t) > cut)


def build_sequences(events: pd.DataFrame, n_items: int) -> Sequences:
    """Collapse events into first-touch item sequences per user, ordered by time."""
    first = (
        events.sort_values(["user_id", "timestamp", "session_id"], kind="stable")
        .drop_duplicates(["user_id", "item_id"], keep="first")
    )
    ts = first["timestamp"].to_numpy(dtype="datetime64[us]").astype(np.int64) / 1e6
    users = first["user_id"].to_numpy()
    items = first["item_id"].to_numpy(dtype=np.int64)
    bounds = np.flatnonzero(np.diff(users)) + 1
    return Sequences(
        user_ids=users[np.r_[0, bounds]] if len(users) else users,
        items=np.split(items, bounds) if len(items) else [],
        times=np.split(ts, bounds) if len(ts) else [],
        n_items=n_items,
    )


def save_sequences(seqs: Sequences, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"user_id": seqs.user_ids, "items": seqs.items, "times": seqs.times}).to_parquet(
        out_dir / SEQUENCES_FILE, index=False
    )
    lengths = np.array([len(s) for s in seqs.items])
    (out_dir / META_FILE).write_text(
        json.dumps(
            {
                "n_items": seqs.n_items,
                "n_users": len(seqs),
                "n_interactions": int(lengths.sum()),
                "n_evaluated_users": int((lengths >= MIN_EVALUATED_LENGTH).sum()),
                "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
            },
            indent=2,
        )
    )


def load_sequences(in_dir: Path) -> Sequences:
    table = pd.read_parquet(in_dir / SEQUENCES_FILE)
    meta = json.loads((in_dir / META_FILE).read_text())
    return Sequences(
        user_ids=table["user_id"].to_numpy(),
        items=[np.asarray(x, dtype=np.int64) for x in table["items"]],
        times=[np.asarray(x, dtype=np.float64) for x in table["times"]],
        n_items=int(meta["n_items"]),
    )
