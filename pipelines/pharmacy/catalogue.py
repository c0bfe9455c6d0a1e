"""Build the placements' tables from the catalogue: names, prices, generics, substitutes, days a pack of a
chronic medicine lasts (refills), and the search index.

A substitute of a product has the same molecules at the same strengths (pipelines/data/text
composition_parts, so spelling variants meet) from another manufacturer; a product's substitutes are
kept cheapest first. A composition with a part of unknown strength has no substitutes: "amoxicillin"
alone does not say which tablet replaces which.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import pandas as pd

from pipelines.core.config import RefillSettings
from pipelines.data.text import composition_parts, field_values, is_missing
from pipelines.pharmacy.search import SearchIndex, build_search_index
from pipelines.pharmacy.served import MAX_SUBSTITUTES, PlacementTables, csr_rows

#: What a search query is matched against: what a customer types (a brand, a molecule, a maker, an ailment).
SEARCH_FIELDS = ("name", "composition", "manufacturer", "therapeutic_class", "uses")
#: "strip of 10 tablets", "bottle of 30 capsules", "3 x 10 tablets": doses in one pack.
_PACK_DOSES = re.compile(r"(?:(\d+)\s*x\s*)?(\d+)\s*(?:tablet|capsule|softgel|pill)s?\b", re.IGNORECASE)


def pack_doses(pack_size: object) -> int:
    """Tablets or capsules in one pack (0 when the pack is not counted in doses: a syrup, a cream)."""
    match = None if is_missing(pack_size) else _PACK_DOSES.search(str(pack_size))
    return 0 if match is None else int(match[2]) * int(match[1] or 1)


def _column(catalogue: pd.DataFrame, name: str) -> np.ndarray:
    return catalogue[name].to_numpy(dtype=object) if name in catalogue.columns else np.full(len(catalogue), None)


def build_placement_tables(catalogue: pd.DataFrame, n_items: int,
                           refills: RefillSettings | None = None) -> PlacementTables:
    """Names, prices, generic flags, substitutes and pack supply over ids 0..n_items from the catalogue."""
    ids = catalogue["item_id"].to_numpy(dtype=np.int64)
    keep = (ids >= 1) & (ids <= n_items)
    refills = refills or RefillSettings()
    chronic = {c.strip().lower() for c in refills.classes}
    supply = np.zeros(n_items + 1, dtype=np.float32)
    for item, cls, pack in zip(ids[keep], _column(catalogue, "therapeutic_class")[keep],
                               _column(catalogue, "pack_size")[keep], strict=True):
        if not is_missing(cls) and str(cls).strip().lower() in chronic:
            supply[item] = pack_doses(pack) / refills.doses_per_day
    names = np.full(n_items + 1, "", dtype=object)
    price = np.zeros(n_items + 1, dtype=np.float32)
    generic = np.zeros(n_items + 1, dtype=bool)
    groups: dict[tuple, list[int]] = defaultdict(list)
    maker: dict[int, str] = {}
    for item, name, cost, tags, composition, manufacturer in zip(
            ids[keep], _column(catalogue, "name")[keep], _column(catalogue, "price")[keep],
            _column(catalogue, "tags")[keep], _column(catalogue, "composition")[keep],
            _column(catalogue, "manufacturer")[keep], strict=True):
        item = int(item)
        names[item] = "" if is_missing(name) else str(name)
        price[item] = 0.0 if is_missing(cost) else float(cost)
        generic[item] = "generic" in field_values("tags", tags)
        parts = composition_parts(composition)
        if parts and all(strength for _, strength in parts):
            groups[tuple(parts)].append(item)
            maker[item] = (field_values("manufacturer", manufacturer) or [""])[0]
    lists: dict[int, list[int]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        by_price = sorted(members, key=lambda i: (price[i], i))
        for item in members:
            lists[item] = [o for o in by_price if o != item and (not maker[item] or maker[o] != maker[item])][
                :MAX_SUBSTITUTES]
    indptr, indices = csr_rows(lists, n_items + 1)
    return PlacementTables(np.array(names.tolist(), dtype=str), price, generic, indptr, indices, supply)


def search_texts(catalogue: pd.DataFrame, n_items: int) -> list[str]:
    """Per item id 0..n_items, the words search matches: SEARCH_FIELDS' values ("" outside the catalogue)."""
    ids = catalogue["item_id"].to_numpy(dtype=np.int64)
    keep = (ids >= 1) & (ids <= n_items)
    texts = [""] * (n_items + 1)
    columns = [_column(catalogue, name)[keep] for name in SEARCH_FIELDS]
    for item, *values in zip(ids[keep].tolist(), *columns, strict=True):
        texts[item] = " ".join(str(value) for value in values if not is_missing(value))  # "|" splits words too
    return texts


def build_search(catalogue: pd.DataFrame, n_items: int) -> SearchIndex:
    """The search placement's index over item ids 0..n_items."""
    return build_search_index(search_texts(catalogue, n_items), n_items)
