"""Every adapter turns its files into the generator's internal tables, and the gate accepts them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import PROJECT_ROOT, DataSettings, ValidateSettings
from pipelines.data.adapters import SourceError, load_source
from pipelines.data.adapters.s3rec import read_s3rec
from pipelines.data.adapters.tables import read_tables
from pipelines.data.schema import CATALOGUE_COLUMNS, EVENTS_COLUMNS
from pipelines.validate import validate_tables

# CI keeps the public datasets next to the repository (../shared/datasets from the repo root).
BEAUTY = (PROJECT_ROOT / ".." / "shared" / "datasets" / "amazon-beauty").resolve()
needs_beauty = pytest.mark.skipif(not (BEAUTY / "Beauty.txt").exists(),
                                  reason=f"Amazon Beauty files not found at {BEAUTY} (../shared/datasets)")
LENIENT = ValidateSettings(min_products=3, min_events=5)


def _assert_internal(world) -> None:
    assert list(world.catalogue.columns) == list(CATALOGUE_COLUMNS)
    assert list(world.events.columns) == list(EVENTS_COLUMNS)
    assert world.catalogue["item_id"].tolist() == list(range(1, len(world.catalogue) + 1))


def test_s3rec_tiny_file(tmp_path: Path) -> None:
    seqs = tmp_path / "Tiny.txt"
    seqs.write_text("10 7 3 9\n20 3 3 5\n\n30 9 7 5 11\n")
    attrs = tmp_path / "Tiny_item2attributes.json"
    attrs.write_text(json.dumps({"3": [1, 2], "7": [2], "9": [], "5": [4]}))
    world = read_s3rec(seqs, attrs)
    _assert_internal(world)
    # Source items 3,5,7,9,11 -> dense 1..5; users 10,20,30 -> 1..3.
    assert world.catalogue["name"].tolist() == ["item 3", "item 5", "item 7", "item 9", "item 11"]
    assert world.catalogue["tags"].tolist()[:3] == ["a1|a2", "a4", "a2"]
    assert world.catalogue["tags"].isna().tolist()[3:] == [True, True]  # item 9 has no attributes, 11 none listed
    user1 = world.events[world.events["user_id"] == 1].sort_values("timestamp")
    assert user1["item_id"].tolist() == [3, 1, 4]  # 7, 3, 9 in line order
    assert user1["timestamp"].diff().dropna().eq(pd.Timedelta(hours=1)).all()
    assert world.source["users"] == 3 and world.source["items"] == 5 and world.source["interactions"] == 10
    assert world.source["dataset"] == "Tiny"
    report = validate_tables(world.catalogue, world.events, LENIENT)
    assert report.success, report.summary()


def test_s3rec_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n2\n")
    with pytest.raises(SourceError, match=r"bad.txt:2: a line needs a user and at least one item"):
        read_s3rec(bad)
    bad.write_text("1 2 x\n")
    with pytest.raises(SourceError, match="item ids must be integers"):
        read_s3rec(bad)
    with pytest.raises(SourceError, match="data.s3rec_path 'nope.txt' not found"):
        load_source(DataSettings(source="s3rec", s3rec_path="nope.txt", s3rec_attributes=""))


def _tiny_tables(tmp_path: Path) -> tuple[Path, Path]:
    events = pd.DataFrame({
        "visitor": ["u1", "u1", "u1", "u2", "u2", "u2", "u1"],
        "product": ["B", "A", "A", "C", "B", "Z", "C"],
        "action": ["pageview", "pageview", "addtocart", "pageview", "transaction", "pageview", "pageview"],
        # u1's last event comes 2 hours later: a new session.
        "ts": [1_700_000_000, 1_700_000_060, 1_700_000_120, 1_700_000_030, 1_700_000_090, 1_700_000_100,
               1_700_007_300],
    })
    events_path = tmp_path / "clicks.csv"
    events.to_csv(events_path, index=False)
    catalogue = pd.DataFrame({"sku": ["A", "B", "C"], "title": ["Aspirin", "Bandage", "Cough syrup"],
                              "mrp": [10.0, 25.5, 80.0], "brand": ["X", None, "Y"]})
    catalogue_path = tmp_path / "products.parquet"
    catalogue.to_parquet(catalogue_path)
    return events_path, catalogue_path


MAPPING = {"user_id": "visitor", "item_id": "sku", "event_type": "action", "timestamp": "ts",
           "name": "title", "price": "mrp", "manufacturer": "brand"}
TYPES = {"pageview": "view", "addtocart": "add_to_cart", "transaction": "purchase"}


def test_tables_with_column_mapping(tmp_path: Path) -> None:
    events_path, catalogue_path = _tiny_tables(tmp_path)
    # The events file calls the item column "product", the catalogue "sku": map one, rename the other.
    pd.read_csv(events_path).rename(columns={"product": "sku"}).to_csv(events_path, index=False)
    world = read_tables(events_path, catalogue_path, columns=MAPPING, event_types=TYPES)
    _assert_internal(world)
    cat, ev = world.catalogue, world.events
    assert cat["name"].tolist() == ["Aspirin", "Bandage", "Cough syrup"] and cat["price"].tolist() == [10.0, 25.5, 80.0]
    assert set(ev["event_type"]) == {"view", "add_to_cart", "purchase"}
    assert ev["item_id"].max() == 4 and world.source["items_only_in_events"] == 1  # "Z" is not in the catalogue
    assert ev["session_id"].nunique() == 3  # u1 twice (2 h gap), u2 once
    assert ev["timestamp"].is_monotonic_increasing
    report = validate_tables(cat, ev, LENIENT)
    assert not report.success and any("catalogue" in c.message for c in report.failed)  # the unknown item
    lenient = LENIENT.model_copy(update={"max_unknown_item_share": 0.2})
    assert validate_tables(cat, ev, lenient).success


def test_tables_errors_say_what_to_map(tmp_path: Path) -> None:
    events_path, catalogue_path = _tiny_tables(tmp_path)
    with pytest.raises(SourceError, match=r"no column for \['user_id', 'item_id', 'timestamp'\]"):
        read_tables(events_path, catalogue_path)
    with pytest.raises(SourceError, match="column 'visitorid' .mapped to user_id. not found"):
        read_tables(events_path, catalogue_path, columns={**MAPPING, "user_id": "visitorid"})
    with pytest.raises(SourceError, match="unknown internal column"):
        read_tables(events_path, catalogue_path, columns={"userid": "visitor"})
    odd = tmp_path / "events.xlsx"
    odd.write_text("")
    with pytest.raises(SourceError, match="unsupported file type"):
        read_tables(odd)


def test_sparse_availability_flags_are_kept_and_a_bad_one_is_named(tmp_path: Path) -> None:
    """restricted / in_stock (read by the safety policy) survive the adapter as yes/no/blank; anything else stops it."""
    events_path, catalogue_path = _tiny_tables(tmp_path)
    pd.read_csv(events_path).rename(columns={"product": "sku"}).to_csv(events_path, index=False)
    catalogue = pd.read_parquet(catalogue_path)
    catalogue["stock"] = ["yes", None, "0"]
    catalogue.to_parquet(catalogue_path)
    world = read_tables(events_path, catalogue_path, columns={**MAPPING, "in_stock": "stock"}, event_types=TYPES)
    assert world.catalogue["in_stock"].tolist() == [True, pd.NA, False]
    assert "restricted" not in world.catalogue.columns, "absent stays absent (allowed)"
    catalogue["stock"] = ["yes", "maybe", "0"]
    catalogue.to_parquet(catalogue_path)
    with pytest.raises(SourceError, match=r"in_stock: value 'maybe' is not a yes/no flag"):
        read_tables(events_path, catalogue_path, columns={**MAPPING, "in_stock": "stock"}, event_types=TYPES)


def test_delivery_regions_are_kept_as_codes_and_a_bad_one_is_named_by_row(tmp_path: Path) -> None:
    """deliverable_to (postcode prefixes the product ships to) survives the adapter trimmed and upper-cased;
    blank stays blank (ships everywhere); a code with other characters stops it, naming the product."""
    events_path, catalogue_path = _tiny_tables(tmp_path)
    pd.read_csv(events_path).rename(columns={"product": "sku"}).to_csv(events_path, index=False)
    catalogue = pd.read_parquet(catalogue_path)
    catalogue["deliverable_to"] = [" 110 | 400", None, "sw1"]
    catalogue.to_parquet(catalogue_path)
    world = read_tables(events_path, catalogue_path, columns=MAPPING, event_types=TYPES)
    assert world.catalogue["deliverable_to"].tolist()[::2] == ["110|400", "SW1"]
    assert pd.isna(world.catalogue["deliverable_to"].tolist()[1])
    catalogue["deliverable_to"] = ["110", "40;0", None]
    catalogue.to_parquet(catalogue_path)
    with pytest.raises(SourceError, match=r"deliverable_to: product 'B' holds '40;0', not a region code"):
        read_tables(events_path, catalogue_path, columns=MAPPING, event_types=TYPES)


def test_unmapped_event_label_is_left_for_the_gate(tmp_path: Path) -> None:
    events_path, catalogue_path = _tiny_tables(tmp_path)
    pd.read_csv(events_path).rename(columns={"product": "sku"}).to_csv(events_path, index=False)
    world = read_tables(events_path, catalogue_path, columns=MAPPING, event_types={"pageview": "view"})
    report = validate_tables(world.catalogue, world.events, LENIENT.model_copy(
        update={"max_unknown_item_share": 0.2}))
    assert "transaction" in report.summary() and "event_type" in report.summary()


@needs_beauty
def test_beauty_through_the_s3rec_adapter() -> None:
    world = load_source(DataSettings(source="s3rec"))  # params.yaml defaults point at ../shared/datasets
    _assert_internal(world)
    assert world.events["user_id"].nunique() == 22_363
    assert len(world.catalogue) == world.events["item_id"].nunique() == 12_101
    assert len(world.events) == 198_502
    assert world.catalogue["tags"].notna().all()  # every item has attributes
    n_attrs = world.catalogue["tags"].str.split("|").explode().nunique()
    assert n_attrs == 637
    # Order within each user's line is kept: timestamps strictly increase per user.
    per_user = world.events.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing)
    assert per_user.all() and world.events.groupby("user_id").size().min() >= 5
    report = validate_tables(world.catalogue, world.events, ValidateSettings())
    assert report.success, report.summary()


@needs_beauty
def test_beauty_through_the_tables_adapter(tmp_path: Path) -> None:
    rows = []
    for line in (BEAUTY / "Beauty.txt").read_text().splitlines():
        user, *items = line.split()
        rows.extend((user, item, pos) for pos, item in enumerate(items))
    path = tmp_path / "beauty_events.parquet"
    pd.DataFrame(rows, columns=["uid", "iid", "pos"]).to_parquet(path)
    world = read_tables(path, None, columns={"user_id": "uid", "item_id": "iid", "timestamp": "pos"})
    assert world.events["user_id"].nunique() == 22_363
    assert len(world.catalogue) == 12_101 and len(world.events) == 198_502
    assert np.array_equal(np.sort(world.catalogue["item_id"]), np.arange(1, 12_102))
