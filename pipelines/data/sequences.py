"""User interaction sequences and the leave-one-out split every model is scored on.

One token per (user, item): the first time the user touched the item, in time order. That is
the shape of the public benchmarks (each user-item pair once) and keeps "rank against all items
with the user's seen items masked" meaningful. For each user the last item is the test target,
the one before it the validation target, the rest is training history.

Each token also carries an event kind: the strongest event (view < click < add_to_cart <
purchase) the user had with that item before first touching the next item. That is what a live
session knows at that point, so the kind never leaks anything from after the item it follows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.schema import EVENT_TYPES

SEQUENCES_FILE = "sequences.parquet"
META_FILE = "meta.json"
MIN_EVALUATED_LENGTH = 3  # a user needs train history + validation + test targets
#: Event kind codes of the tokens: 0 = unknown (padding, or a client that does not send kinds).
EVENT_KIND_CODES: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES, start=1)}
N_EVENT_KINDS = len(EVENT_KIND_CODES)


@dataclass(frozen=True)
class Sequences:
    """Per-user item sequences (dense item ids 1..n_items) with the times they happened."""

    user_ids: np.ndarray
    items: list[np.ndarray]
    times: list[np.ndarray]  # seconds since epoch, float64
    n_items: int
    kinds: list[np.ndarray] | None = None  # event kind code per token (EVENT_KIND_CODES); None: unknown
    # True in the view a refit trains on (with_validation_in_training): validation targets are training data.
    validation_in_training: bool = False

    def __len__(self) -> int:
        return len(self.items)

    def with_validation_in_training(self) -> Sequences:
        """The view a refit trains on: train() also holds each user's validation target; the validation
        split is then training data, so evaluating on it raises (the test split is unchanged)."""
        return replace(self, validation_in_training=True)

    def one_step_earlier(self) -> Sequences:
        """Each evaluated user's test target removed: the validation target becomes the test target and the
        item before it the validation target. For checking a choice whose own validation needs the item
        after the validation target (a refit trains on it): decide there, and the real test stays unread."""
        def cut(rows: list[np.ndarray]) -> list[np.ndarray]:
            return [r[:-1] if len(self.items[i]) >= MIN_EVALUATED_LENGTH else r for i, r in enumerate(rows)]

        return replace(self, items=cut(self.items), times=cut(self.times),
                       kinds=None if self.kinds is None else cut(self.kinds))

    @property
    def _held_out(self) -> int:
        """Targets cut from the end of an evaluated user's history for training: validation and test, or test."""
        return 1 if self.validation_in_training else 2

    def train(self) -> list[np.ndarray]:
        """Histories the models learn from: everything but the validation and test targets."""
        cut = self._held_out
        return [s[:-cut] if len(s) >= MIN_EVALUATED_LENGTH else s for s in self.items]

    def train_kinds(self) -> list[np.ndarray] | None:
        """Event kinds aligned with train() (None when the data has no kinds)."""
        if self.kinds is None:
            return None
        cut = self._held_out
        return [k[:-cut] if len(k) >= MIN_EVALUATED_LENGTH else k for k in self.kinds]

    def evaluation(self, split: str = "test") -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(histories, targets, row index) for users long enough to be evaluated."""
        cut = self._cut(split)
        rows = np.array([i for i, s in enumerate(self.items) if len(s) >= MIN_EVALUATED_LENGTH], dtype=np.int64)
        histories = [self.items[i][:-cut] for i in rows]
        targets = np.array([self.items[i][-cut] for i in rows], dtype=np.int64)
        return histories, targets, rows

    def evaluation_kinds(self, split: str = "test") -> list[np.ndarray] | None:
        """Event kinds aligned with evaluation(split)'s histories (None when the data has no kinds)."""
        if self.kinds is None:
            return None
        cut = self._cut(split)
        return [k[:-cut] for k in self.kinds if len(k) >= MIN_EVALUATED_LENGTH]

    def cutoff_time(self, split: str = "test") -> float:
        """Latest time a model may learn from when predicting `split` (for time-window baselines)."""
        cut = self._cut(split)
        return max(float(t[:-cut].max()) for t in self.times if len(t) > cut)

    def _cut(self, split: str) -> int:
        if split not in ("test", "valid"):
            raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
        if split == "valid" and self.validation_in_training:
            raise ValueError("these sequences train on the validation targets (a refit's view): "
                             "the validation split is training data here and cannot score a model")
        return 1 if split == "test" else 2


def token_kinds(ordered: pd.DataFrame, first: pd.DataFrame) -> np.ndarray:
    """Strongest event kind per first-touch token, counting events before the user's next token.

    `ordered` is every event sorted by user and time; `first` the first-touch rows (same order).
    An event of (user, item) counts when it happened before the user first touched the item
    after it in the sequence (the last token counts all its events).
    """
    tokens = first[["user_id", "item_id", "timestamp"]].reset_index(drop=True)
    following = tokens["timestamp"].shift(-1)
    last_of_user = tokens["user_id"].ne(tokens["user_id"].shift(-1))
    tokens["until"] = following.where(~last_of_user, pd.Timestamp.max)
    tokens["token"] = np.arange(len(tokens))
    codes = ordered["event_type"].map(EVENT_KIND_CODES).fillna(0).astype(np.int8)
    joined = ordered[["user_id", "item_id", "timestamp"]].assign(code=codes.to_numpy()).merge(
        tokens[["user_id", "item_id", "until", "token"]], on=["user_id", "item_id"], how="inner"
    )
    counted = joined[joined["timestamp"] < joined["until"]]
    kinds = np.zeros(len(tokens), dtype=np.int8)
    strongest = counted.groupby("token")["code"].max()
    kinds[strongest.index.to_numpy()] = strongest.to_numpy()
    # The first touch itself always counts (it may share its timestamp with the next token).
    own = first["event_type"].map(EVENT_KIND_CODES).fillna(0).astype(np.int8).to_numpy()
    return np.maximum(kinds, own)


def build_sequences(events: pd.DataFrame, n_items: int) -> Sequences:
    """Collapse events into first-touch item sequences per user, ordered by time, with event kinds."""
    ordered = events.sort_values(["user_id", "timestamp", "session_id"], kind="stable")
    first = ordered.drop_duplicates(["user_id", "item_id"], keep="first")
    ts = first["timestamp"].to_numpy(dtype="datetime64[us]").astype(np.int64) / 1e6
    users = first["user_id"].to_numpy()
    items = first["item_id"].to_numpy(dtype=np.int64)
    kinds = token_kinds(ordered, first) if len(first) else np.zeros(0, dtype=np.int8)
    bounds = np.flatnonzero(np.diff(users)) + 1
    return Sequences(
        user_ids=users[np.r_[0, bounds]] if len(users) else users,
        items=np.split(items, bounds) if len(items) else [],
        times=np.split(ts, bounds) if len(ts) else [],
        n_items=n_items,
        kinds=np.split(kinds, bounds) if len(kinds) else [],
    )


def save_sequences(seqs: Sequences, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = {"user_id": seqs.user_ids, "items": seqs.items, "times": seqs.times}
    if seqs.kinds is not None:
        columns["kinds"] = seqs.kinds
    pd.DataFrame(columns).to_parquet(out_dir / SEQUENCES_FILE, index=False)
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
        kinds=[np.asarray(x, dtype=np.int8) for x in table["kinds"]] if "kinds" in table else None,
    )
