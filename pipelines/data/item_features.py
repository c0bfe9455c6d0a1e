"""Item meta-info as integer tokens: what sequence models read beside the item id.

Each meta field (therapeutic class, uses, composition, manufacturer, form, tags) is normalised
and split into values by pipelines/data/text.py, the same values Meta-Prod2Vec and the text
methods read ("fever|headache", "Paracetamol 500mg + Caffeine 30mg" → molecules); every value
gets a token id in one shared vocabulary (0 = none). The result is an (n_items + 1, max_tokens)
matrix, row 0 = padding: a new product with meta-info but no interactions still has a
representation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.schema import META_FIELDS
from pipelines.data.text import field_values

FEATURES_FILE = "item_features.npy"
VOCAB_FILE = "item_vocab.json"


@dataclass(frozen=True)
class ItemFeatures:
    tokens: np.ndarray  # (n_items + 1, max_tokens) int64, 0 = none
    vocab: dict[str, int]  # "field=value" -> token id

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 1

    def save(self, out_dir: Path) -> None:
        np.save(out_dir / FEATURES_FILE, self.tokens)
        (out_dir / VOCAB_FILE).write_text(json.dumps(self.vocab))

    @classmethod
    def load(cls, in_dir: Path) -> ItemFeatures:
        return cls(tokens=np.load(in_dir / FEATURES_FILE), vocab=json.loads((in_dir / VOCAB_FILE).read_text()))


def build_item_features(catalogue: pd.DataFrame, n_items: int, max_tokens: int = 8) -> ItemFeatures:
    """Token matrix of every catalogue item's meta-info (fields in META_FIELDS order, capped)."""
    fields = [f for f in META_FIELDS if f in catalogue.columns]
    vocab: dict[str, int] = {}
    tokens = np.zeros((n_items + 1, max_tokens), dtype=np.int64)
    records = catalogue[["item_id", *fields]].to_dict("records")
    for record in records:
        item = int(record["item_id"])
        if not 1 <= item <= n_items:
            continue
        row: list[int] = []
        for field in fields:
            for value in field_values(field, record[field]):
                key = f"{field}={value}"
                row.append(vocab.setdefault(key, len(vocab) + 1))
        row = row[:max_tokens]
        tokens[item, : len(row)] = row
    return ItemFeatures(tokens=tokens, vocab=vocab)
