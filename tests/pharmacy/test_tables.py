"""Building the policy's tables: the catalogue's compositions and flags, the interaction table and its bad rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.data.world import CLASSES
from pipelines.pharmacy.served import SafetyPolicy
from pipelines.pharmacy.tables import (
    DEFAULT_INTERACTIONS,
    InteractionTableError,
    build_safety_tables,
    read_interactions,
)

HEADER = "molecule_a,molecule_b,severity,source\n"


def write(tmp_path, body: str):
    path = tmp_path / "interactions.csv"
    path.write_text(HEADER + body)
    return path


def test_the_shipped_table_names_only_the_generated_worlds_molecules_each_with_a_source():
    world = {molecule.casefold() for cls in CLASSES for molecule, _ in cls.molecules}
    pairs = read_interactions(DEFAULT_INTERACTIONS, ("major", "moderate", "minor"))
    assert len(pairs) >= 15
    assert {m for pair in pairs for m in pair} <= world
    assert ("levothyroxine", "calcium carbonate") in pairs and ("ibuprofen", "diclofenac") in pairs


def test_only_the_blocked_severities_are_enforced(tmp_path):
    path = write(tmp_path, "Ibuprofen,Diclofenac,major,label\nParacetamol,Caffeine,minor,label\n")
    assert read_interactions(path) == [("ibuprofen", "diclofenac")]
    assert len(read_interactions(path, ("major", "minor"))) == 2


@pytest.mark.parametrize(("body", "message"), [
    ("Ibuprofen,Diclofenac,major\n", r":2: expected 4 fields"),
    ("Ibuprofen,Diclofenac,major,label\nIbuprofen,,major,label\n", r":3: '' is not one molecule name"),
    ("Ibuprofen,Paracetamol + Caffeine,major,label\n", r":2: 'Paracetamol \+ Caffeine' is not one molecule"),
    ("IBUPROFEN 400mg,ibuprofen,major,label\n", r":2: a molecule cannot interact with itself"),
    ("Ibuprofen,Diclofenac,severe,label\n", r":2: severity 'severe' is not one of"),
    ("\nIbuprofen,Diclofenac,major,\n", r":3: source is empty"),
])
def test_a_bad_row_is_named_by_its_line(tmp_path, body, message):
    with pytest.raises(InteractionTableError, match=message):
        read_interactions(write(tmp_path, body))


def test_a_wrong_header_or_missing_file_is_refused(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n")
    with pytest.raises(InteractionTableError, match=r"x.csv:1: header must be molecule_a,molecule_b"):
        read_interactions(path)
    with pytest.raises(InteractionTableError, match="not found"):
        read_interactions(tmp_path / "missing.csv")
    with pytest.raises(InteractionTableError, match=r"block_severities holds \['fatal'\]"):
        read_interactions(DEFAULT_INTERACTIONS, ("fatal",))


def test_catalogue_spellings_meet_the_table_and_sparse_flags_mean_allowed():
    catalogue = pd.DataFrame({
        "item_id": [1, 2, 3, 4, 5],
        "composition": ["Ciprofloxacin 500mg", "CALCIUM CARBONATE 500 mg", "paracetamol 500mg+caffeine 30mg", None,
                        "Calcium Carbonate 500mg"],
        "rx_required": [True, False, False, True, False],
        "restricted": pd.array([None, None, True, None, None], dtype="boolean"),
        "in_stock": pd.array([True, None, None, None, False], dtype="boolean"),
    })
    tables = build_safety_tables(catalogue, n_items=6, interactions=[("ciprofloxacin", "calcium carbonate")])
    assert tables.restricted.tolist() == [False, False, False, True, False, False, False]
    assert tables.unavailable.tolist() == [False, False, False, False, False, True, False]
    assert tables.rx_required.tolist() == [False, True, False, False, True, False, False]
    policy = SafetyPolicy(tables)
    on_cipro = policy.context(session=np.array([1]))
    assert policy.allowed(np.array([2, 3, 4, 6]), on_cipro).tolist() == [False, False, False, True]
    # item 6 is not in the catalogue: no molecules, no flags (the backend drops ids outside the catalogue itself)
    assert tables.molecule_indptr[6] == tables.molecule_indptr[7]
