"""Placements without a server: blends, the list builder, substitutes and their reasons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import RefillSettings
from pipelines.pharmacy.catalogue import build_placement_tables, pack_doses
from pipelines.pharmacy.served import (
    Candidates,
    SafetyPolicy,
    SafetyTables,
    ServedList,
    due_refills,
    fill_blend,
    parse_blend,
    refill_reason,
    substitute_reason,
)

CATALOGUE = pd.DataFrame({
    "item_id": [1, 2, 3, 4, 5, 6],
    "name": ["Glucofast 500mg Tablet", "Metfo 500 Tablet", "Diabex 500mg Tablet", "Glyco 1000mg Tablet", "Amoxil",
             "Cheapfo 500mg Tablet"],
    "composition": ["Metformin 500mg", "METFORMIN 500 mg", "metformin 500mg", "Metformin 1000mg", "Amoxicillin",
                    "Metformin 500mg"],
    "manufacturer": ["Zenith Pharma", "Aurora Healthcare", "Zenith Pharma Ltd", "Helix Pharma", None, None],
    "price": [100.0, 80.0, 90.0, 150.0, 40.0, 62.0],
    "tags": [None, "generic", None, None, None, "generic|bestseller"],
    "therapeutic_class": ["Antidiabetic", "antidiabetic", "Antidiabetic", "Antidiabetic", "Antibiotic", None],
    "pack_size": ["strip of 10 tablets", "bottle of 30 tablets", "3 x 10 Tablets", "bottle of 100 ml",
                  "strip of 10 capsules", "strip of 15 tablets"],
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
    built: list[str] = []

    def offer(source: str, candidates: Candidates):
        def build(_row):
            built.append(source)
            return candidates
        return build

    offers = {"personal": offer("personal", Candidates(a, np.zeros(4), "gpt4rec", "personal")),
              "complements": offer("complements", Candidates(b, np.zeros(3), "rules", "complements",
                                                             ["x", "y", "z"].__getitem__))}
    fill_blend(row, parse_blend("personal:2,complements:1"), offers,
               lambda r, limit: r.take(np.arange(10, 20), np.zeros(10), "popularity", 8, limit=limit, code="popular"),
               8)
    assert row.ids == [1, 2, 5, 3, 4, 6, 10, 11]
    assert row.codes == ["personal", "personal", "complements", "personal", "personal", "complements", "popular",
                         "popular"]
    assert row.texts[2] == "x" and row.texts[5] == "y", "each item keeps its own reason; 7 is excluded"
    assert row.source == "gpt4rec"
    assert built == ["personal", "complements"], "each source builds its candidates once per list"


@pytest.mark.parametrize(("text", "message"), [
    ("personal:2,trending:3", r"placement source 'trending' is not one of"),
    ("personal:0", r"slots must be a whole number >= 1, got '0'"),
    ("personal", r"slots must be a whole number >= 1, got ''"),
])
def test_a_bad_blend_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_blend(text)


@pytest.mark.parametrize(("pack", "doses"), [
    ("strip of 10 tablets", 10), ("bottle of 30 capsules", 30), ("3 x 10 Tablets", 30), ("strip of 1 tablet", 1),
    ("bottle of 100 ml", 0), ("tube of 30 gm", 0), (None, 0), ("", 0),
])
def test_pack_doses_count_tablets_and_capsules_only(pack, doses):
    assert pack_doses(pack) == doses


def test_a_pack_lasts_its_doses_for_chronic_classes_only():
    tables = build_placement_tables(CATALOGUE, n_items=6)
    assert tables.supply_days.tolist() == [0, 10, 30, 30, 0, 0, 0], "a syrup, an antibiotic, no class: no refill"
    twice_a_day = build_placement_tables(CATALOGUE, n_items=6, refills=RefillSettings(doses_per_day=2))
    assert twice_a_day.supply_days.tolist() == [0, 5, 15, 15, 0, 0, 0]


def test_refills_are_due_from_the_latest_purchase_most_overdue_first():
    tables = build_placement_tables(CATALOGUE, n_items=6)
    # item 1 (10 days a pack) bought 40 and 8 days ago: the latest counts, due in 2; item 2 (30 days) bought
    # 33 days ago: 3 days overdue; item 3 bought 5 days ago: due in 25, not yet; item 5 never refilled.
    ids, due_in = due_refills(tables, np.array([1, 1, 2, 3, 5]), np.array([40, 8, 33, 5, 1]), due_within=7,
                              overdue=30)
    assert ids.tolist() == [2, 1] and due_in.tolist() == [-3, 2]
    ids, _ = due_refills(tables, np.array([2]), np.array([61]), due_within=7, overdue=30)
    assert ids.tolist() == [], "31 days overdue: the therapy is taken to have stopped"
    assert due_refills(tables, np.array([0, 99]), np.array([3, 3]), 7, 30)[0].tolist() == [], "padding, unknown id"
    assert [refill_reason(d) for d in (3, 1, 0, -1, -4)] == [
        "refill due in 3 days", "refill due in 1 day", "refill due today", "refill 1 day overdue",
        "refill 4 days overdue"]


def test_a_take_may_replace_the_exclusions_for_a_refill():
    row = ServedList(exclude=np.array([1, 2]))
    row.take(np.array([1, 2, 3]), np.zeros(3), "refills", 5, exclude=np.array([2]), code="refills")
    assert row.ids == [1, 3]
    row.take(np.array([1, 2, 4]), np.zeros(3), "gpt4rec", 5)
    assert row.ids == [1, 3, 4], "the list's own exclusions hold for the other sources"


def test_a_callers_huge_id_neither_sizes_the_list_nor_is_ever_offered():
    """A purchase of 2**62 (a caller bug the server drops) must not size the id masks; with a policy, only
    catalogue ids can be taken."""
    policy = SafetyPolicy(SafetyTables.permissive(6))
    row = ServedList(exclude=np.array([2, 2**62]), policy=policy, context=policy.context())
    row.take(np.array([2**62, 9, 1, 2, 3]), np.zeros(5), "gpt4rec", 5)
    assert row.ids == [1, 3]
