"""Placements without a server: blends, the list builder, substitutes and their reasons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.pharmacy.catalogue import build_placement_tables
from pipelines.pharmacy.served import ServedList, fill_blend, parse_blend, substitute_reason

CATALOGUE = pd.DataFrame({
    "item_id": [1, 2, 3, 4, 5, 6],
    "name": ["Glucofast 500mg Tablet", "Metfo 500 Tablet", "Diabex 500mg Tablet", "Glyco 1000mg Tablet", "Amoxil",
             "Cheapfo 500mg Tablet"],
    "composition": ["Metformin 500mg", "METFORMIN 500 mg", "metformin 500mg", "Metformin 1000mg", "Amoxicillin",
                    "Metformin 500mg"],
    "manufacturer": ["Zenith Pharma", "Aurora Healthcare", "Zenith Pharma Ltd", "Helix Pharma", None, None],
    "price": [100.0, 80.0, 90.0, 150.0, 40.0, 62.0],
    "tags": [None, "generic", None, None, None, "generic|bestseller"],
})


def test_substitutes_share_molecules_and_strengths_come_from_another_maker_and_cheapest_first():
    tables = build_placement_tables(CATALOGUE, n_items=6)
    assert tables.substitutes(1).tolist() == [6, 2], "3 is the same maker (Ltd is a spelling), 4 another strength"
    assert tables.substitutes(4).tolist() == [] and tables.substitutes(5).tolist() == [], "unknown strength: none"
    assert tables.substitutes(6).tolist() == [2, 3, 1], "an unknown maker may be replaced by any"
    assert substitute_reason(tables, 6, 1) == "same composition as Glucofast 500mg Tablet, 38% cheaper, generic"
    assert substitute_reason(tables, 1, 2).endswith("25% dearer")


def test_a_blend_fills_each_source_up_to_its_slots_then_without_limits_then_popularity():
    row = ServedList(exclude=np.array([7]))
    a, b = np.array([1, 2, 3, 4]), np.array([5, 6, 7])
    take = {
        "personal": lambda r, limit: r.take(a, np.zeros(4), "gpt4rec", 8, limit=limit, code="personal"),
        "complements": lambda r, limit: r.take(b, np.zeros(3), "rules", 8, limit=limit, texts=["x", "y", "z"],
                                               code="complements"),
        "popular": lambda r, limit: r.take(np.arange(10, 20), np.zeros(10), "popularity", 8, code="popular"),
    }
    fill_blend(row, parse_blend("personal:2,complements:1"), take)
    assert row.ids == [1, 2, 5, 3, 4, 6, 10, 11]
    assert row.codes == ["personal", "personal", "complements", "personal", "personal", "complements", "popular",
                         "popular"]
    assert row.texts[2] == "x" and row.texts[5] == "y", "each item keeps its own reason; 7 is excluded"
    assert row.source == "gpt4rec"


@pytest.mark.parametrize(("text", "message"), [
    ("personal:2,trending:3", r"placement source 'trending' is not one of"),
    ("personal:0", r"slots must be a whole number >= 1, got '0'"),
    ("personal", r"slots must be a whole number >= 1, got ''"),
])
def test_a_bad_blend_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_blend(text)
