"""Item meta-info as tokens: the fields Meta-Prod2Vec, TF-IDF and the text encoder read.

1mg-like meta-info is sparse and inconsistent (case, "Ltd" vs "Limited", strengths inside the
composition), so values go through the one catalogue normaliser (pipelines/data/text.py) before
they become vocabulary entries: two spellings of the same manufacturer must be one token, or the
field cannot carry signal to cold items; GPT4Rec's meta tokens read the same values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.data.text import field_values, normalise_text, text_words


def _text_words(catalogue: pd.DataFrame) -> list[list[str]]:
    """The words of each product's name and description."""
    names = catalogue["name"] if "name" in catalogue else pd.Series([""] * len(catalogue))
    desc = catalogue["description"] if "description" in catalogue else pd.Series([""] * len(catalogue))
    return [text_words(f"{normalise_text(n)} {normalise_text(d)}") for n, d in zip(names, desc)]


@dataclass
class ItemFields:
    """Per item, the (field, value) tokens: a CSR over items 0..n_items (row 0 = padding, empty)."""

    fields: list[str]  # field names; field index 0 is always the item id
    vocab: list[str]  # global value id -> "field=value"
    indptr: np.ndarray  # (n_items + 2,) int64
    value_ids: np.ndarray  # global value ids, int32
    field_ids: np.ndarray  # field index of each entry (1..len(fields)-1), int32
    entry_weight: np.ndarray  # 1 / (number of values of that field on that item), float32

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 2

    def has_field(self) -> np.ndarray:
        """(n_items + 1, n_fields) bool: which meta fields each item has (column 0, the id, all False)."""
        out = np.zeros((self.n_items + 1, len(self.fields)), dtype=bool)
        rows = np.repeat(np.arange(self.n_items + 1), np.diff(self.indptr))
        out[rows, self.field_ids] = True
        return out


def item_fields(catalogue: pd.DataFrame, n_items: int, fields: Sequence[str], text_vocab: int = 2000) -> ItemFields:
    """Tokenise the requested meta fields of every item; fields absent from the catalogue are skipped."""
    if "item_id" not in catalogue:
        raise ValueError("the catalogue has no item_id column")
    present = [f for f in fields if f == "text" or f in catalogue.columns]
    if "text" in present and not ({"name", "description"} & set(catalogue.columns)):
        present.remove("text")
    if not present:
        raise ValueError(f"none of the meta fields {list(fields)} is a catalogue column "
                         f"(columns: {list(catalogue.columns)}); set meta_prod2vec.fields in params.yaml")
    catalogue = catalogue[catalogue["item_id"].between(1, n_items)]
    ids = catalogue["item_id"].to_numpy(dtype=np.int64)
    per_item: list[list[tuple[int, str]]] = [[] for _ in range(n_items + 1)]
    for f_index, field in enumerate(present, start=1):
        if field == "text":
            words = _text_words(catalogue)
            keep = {w for w, _ in Counter(w for ws in words for w in ws).most_common(text_vocab)}
            for item, ws in zip(ids, words):
                per_item[item].extend((f_index, w) for w in ws if w in keep)
        else:
            for item, raw in zip(ids, catalogue[field].to_numpy(dtype=object)):
                per_item[item].extend((f_index, v) for v in field_values(field, raw))
    vocab_index: dict[str, int] = {}
    indptr = np.zeros(n_items + 2, dtype=np.int64)
    value_ids, field_ids, weights = [], [], []
    for item in range(n_items + 1):
        tokens = per_item[item]
        counts = Counter(f for f, _ in tokens)
        for f, v in tokens:
            key = f"{present[f - 1]}={v}"
            value_ids.append(vocab_index.setdefault(key, len(vocab_index)))
            field_ids.append(f)
            weights.append(1.0 / counts[f])
        indptr[item + 1] = indptr[item] + len(tokens)
    return ItemFields(
        fields=["item_id", *present],
        vocab=list(vocab_index),
        indptr=indptr,
        value_ids=np.asarray(value_ids, dtype=np.int32),
        field_ids=np.asarray(field_ids, dtype=np.int32),
        entry_weight=np.asarray(weights, dtype=np.float32),
    )


def item_texts(catalogue: pd.DataFrame, n_items: int) -> list[str]:
    """One text per item id 0..n_items: name, description and the meta fields, labelled, normalised.

    Items without a catalogue row get "" (the methods treat them as having no text).
    """
    texts = [""] * (n_items + 1)
    cols = [c for c in ("therapeutic_class", "uses", "composition", "manufacturer", "form", "tags")
            if c in catalogue.columns]
    for row in catalogue.itertuples(index=False):
        item = int(row.item_id)
        if not 1 <= item <= n_items:
            continue
        parts = []
        name = normalise_text(getattr(row, "name", None))
        if name:
            parts.append(name.rstrip(".") + ".")
        for c in cols:  # meta before the description: an encoder that truncates keeps the fields
            values = field_values(c, getattr(row, c))
            if values:
                parts.append(f"{c.replace('_', ' ')}: {', '.join(values)}.")
        description = normalise_text(getattr(row, "description", None))
        if description:
            parts.append(description)
        texts[item] = " ".join(parts)
    return texts
