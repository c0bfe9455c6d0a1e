"""The validation gate passes clean data and stops each kind of corruption with a readable error."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import ValidateSettings
from pipelines.validate import DataValidationError, enforce, validate_tables

NOW = pd.Timestamp("2024-06-01 12:00:00")
SETTINGS = ValidateSettings(min_products=5, min_events=10)
N_PRODUCTS = 8


def make_catalogue() -> pd.DataFrame:
    n = N_PRODUCTS
    ids = np.arange(1, n + 1, dtype="int64")
    return pd.DataFrame(
        {
            "item_id": ids,
            "name": [f"Product {i}" for i in ids],
            "manufacturer": ["Cipla", "Sun Pharma", None, "Mankind"] * (n // 4),
            "composition": [f"Paracetamol {100 * i}mg" for i in ids],
            "therapeutic_class": ["analgesic", "antibiotic"] * (n // 2),
            "uses": ["fever|headache", "infection"] * (n // 2),
            "form": ["tablet", "syrup"] * (n // 2),
            "pack_size": ["10 tablets", "100 ml"] * (n // 2),
            "price": np.linspace(10.0, 80.0, n),
            "rx_required": [False, True] * (n // 2),
            "tags": ["otc|pain", None] * (n // 2),
            "description": ["Relieves pain."] + [None] * (n - 1),
            # item i launches on day i of the year; events happen in May.
            "launch_ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(ids, unit="D"),
        }
    )


def make_events() -> pd.DataFrame:
    rows = []
    types = ["view", "click", "add_to_cart", "purchase"]
    start = pd.Timestamp("2024-05-01 09:00:00")
    for session in range(1, 9):  # 8 sessions x 4 events = 32 events
        user = (session + 1) // 2
        for step in range(4):
            rows.append(
                {
                    "user_id": user,
                    "session_id": session,
                    "item_id": (session + step) % N_PRODUCTS + 1,
                    "event_type": types[step],
                    "timestamp": start + pd.Timedelta(days=session, minutes=3 * step),
                }
            )
    events = pd.DataFrame(rows)
    return events.astype({"user_id": "int64", "session_id": "int64", "item_id": "int64"})


Corruption = Callable[[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]


def _missing_column(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return c, e.drop(columns=["session_id"])


def _null_event_item(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    e = e.astype({"item_id": "Int64"})
    e.loc[3, "item_id"] = pd.NA
    return c, e


def _null_event_item_float(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    e = e.astype({"item_id": "float64"})  # what a parquet round trip of an int column with NaN gives
    e.loc[3, "item_id"] = np.nan
    return c, e


def _duplicate_item(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    c.loc[2, "item_id"] = 2
    return c, e


def _unknown_item(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    e.loc[[1, 5], "item_id"] = 999
    return c, e


def _bad_event_type(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    e.loc[4, "event_type"] = "wishlist"
    return c, e


def _zero_price(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    c.loc[1, "price"] = 0.0
    c.loc[2, "price"] = -5.0
    return c, e


def _future_timestamp(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    e.loc[len(e) - 1, "timestamp"] = NOW + pd.Timedelta(days=30)
    return c, e


def _out_of_order(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    # Session 2's third event goes back an hour before its second.
    idx = e.index[e["session_id"] == 2][2]
    e.loc[idx, "timestamp"] = e.loc[idx, "timestamp"] - pd.Timedelta(hours=1)
    return c, e


def _before_launch(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    item = int(e.loc[0, "item_id"])
    c.loc[c["item_id"] == item, "launch_ts"] = pd.Timestamp("2024-05-20")  # after session 1 (May 2)
    return c, e


def _too_few_events(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return c, e.head(6)


def _too_few_products(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    c = c.head(4)
    return c, e[e["item_id"] <= 4]


def _item_id_as_str(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return c.astype({"item_id": str}), e


def _null_name(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    c.loc[5, "name"] = None
    return c, e


def _item_id_zero(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    c.loc[0, "item_id"] = 0
    return c, e


def _epoch_timestamp(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    e.loc[0, "timestamp"] = pd.Timestamp("1970-01-01")
    return c, e


def _null_timestamp(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    e.loc[7, "timestamp"] = pd.NaT
    return c, e


def _missing_catalogue_column(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return c.drop(columns=["launch_ts", "price"]), e


# (id, corruption, words the error message must contain)
CASES: list[tuple[str, Corruption, list[str]]] = [
    ("missing_column", _missing_column, ["events", "session_id", "missing"]),
    ("missing_catalogue_columns", _missing_catalogue_column, ["catalogue", "launch_ts", "price", "missing"]),
    ("null_item_id_in_events", _null_event_item, ["events.item_id", "not be null"]),
    ("null_item_id_float", _null_event_item_float, ["events.item_id", "not be null", "dtype must be int"]),
    ("duplicate_item_id", _duplicate_item, ["catalogue.item_id", "unique", "[2]"]),
    ("unknown_item_id", _unknown_item, ["events.item_id", "catalogue", "999"]),
    ("bad_event_type", _bad_event_type, ["events.event_type", "wishlist"]),
    ("non_positive_price", _zero_price, ["catalogue.price", "> 0", "2 row(s)"]),
    ("future_timestamp", _future_timestamp, ["events.timestamp", "2024-07-01"]),
    ("epoch_timestamp", _epoch_timestamp, ["events.timestamp", "1970-01-01"]),
    ("null_timestamp", _null_timestamp, ["events.timestamp", "not be null"]),
    ("out_of_order_in_session", _out_of_order, ["events.timestamp", "within a session", "session_id"]),
    ("event_before_launch", _before_launch, ["events.timestamp", "launch_ts", "2024-05-20"]),
    ("too_few_events", _too_few_events, ["events", "at least 10", "has 6"]),
    ("too_few_products", _too_few_products, ["catalogue", "at least 5", "has 4"]),
    ("item_id_as_strings", _item_id_as_str, ["catalogue.item_id", "dtype must be int"]),
    ("null_product_name", _null_name, ["catalogue.name", "not be null"]),
    ("item_id_zero", _item_id_zero, ["catalogue.item_id", ">= 1", "[0]"]),
]


def test_valid_tables_pass(tmp_path: Path) -> None:
    catalogue, events = make_catalogue(), make_events()
    report = validate_tables(catalogue, events, SETTINGS, now=NOW)
    assert report.success, report.summary()
    assert report.failed == [] and report.skipped == []
    assert report.row_counts == {"catalogue": N_PRODUCTS, "events": len(events)}
    enforce(report, tmp_path)  # does not raise
    saved = json.loads((tmp_path / "validation.json").read_text())
    assert saved["success"] is True and len(saved["checks"]) == len(report.checks) > 20
    assert "PASSED" in (tmp_path / "validation.md").read_text()


def test_tz_aware_timestamps_and_extra_columns_pass() -> None:
    catalogue, events = make_catalogue(), make_events()
    catalogue["launch_ts"] = catalogue["launch_ts"].dt.tz_localize("Asia/Kolkata")
    events["timestamp"] = events["timestamp"].dt.tz_localize("UTC")
    events["extra"] = 1
    report = validate_tables(catalogue, events, SETTINGS, now=NOW.tz_localize("UTC"))
    assert report.success, report.summary()


def test_inputs_are_not_modified() -> None:
    catalogue, events = make_catalogue(), make_events()
    cat_before, ev_before = catalogue.copy(), events.copy()
    validate_tables(catalogue, events, SETTINGS, now=NOW)
    pd.testing.assert_frame_equal(catalogue, cat_before)
    pd.testing.assert_frame_equal(events, ev_before)


def test_unknown_items_tolerated_up_to_share() -> None:
    catalogue, events = _unknown_item(make_catalogue(), make_events())
    lenient = ValidateSettings(min_products=5, min_events=10, max_unknown_item_share=0.1)
    assert validate_tables(catalogue, events, lenient, now=NOW).success


@pytest.mark.parametrize(("corrupt", "words"), [(c, w) for _, c, w in CASES], ids=[i for i, _, _ in CASES])
def test_corruption_fails_gate(corrupt: Corruption, words: list[str], tmp_path: Path) -> None:
    catalogue, events = corrupt(make_catalogue(), make_events())
    report = validate_tables(catalogue, events, SETTINGS, now=NOW)
    assert not report.success
    with pytest.raises(DataValidationError) as info:
        enforce(report, tmp_path / "reports")
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in error message:\n{message}"
    assert "validation.md" in message
    saved = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert saved["success"] is False and any(not c["success"] for c in saved["checks"])
    markdown = (tmp_path / "reports" / "validation.md").read_text()
    assert "FAILED" in markdown and "| FAIL |" in markdown
    # Every failed check is self-explaining: where, what, and (for row checks) examples.
    for check in report.failed:
        assert check.message and check.table in ("catalogue", "events")
        if check.unexpected_count:
            assert 0 < len(check.examples) <= 5


# --------------------------------------------------------------------------- the stage: nothing downstream runs
def _really_future_timestamp(c: pd.DataFrame, e: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stage checks against the real clock (not NOW above)."""
    e.loc[len(e) - 1, "timestamp"] = pd.Timestamp.now() + pd.Timedelta(days=30)
    return c, e


STAGE_CASES = [(i, c, w) for i, c, w in CASES if i != "future_timestamp"] + [
    ("future_timestamp", _really_future_timestamp, ["events.timestamp", ".. now)"]),
]


@pytest.mark.parametrize(("corrupt", "words"), [(c, w) for _, c, w in STAGE_CASES], ids=[i for i, _, _ in STAGE_CASES])
def test_corrupt_raw_data_trains_nothing(corrupt: Corruption, words: list[str], workdir: Path) -> None:
    """The validate stage fails, leaves no data/validated behind, and the next stage has nothing to read."""
    from pipelines.stages import run_stage

    catalogue, events = corrupt(make_catalogue(), make_events())
    raw, validated = workdir / "data" / "raw", workdir / "data" / "validated"
    raw.mkdir(parents=True)
    catalogue.to_parquet(raw / "catalogue.parquet", index=False)
    events.to_parquet(raw / "events.parquet", index=False)
    validated.mkdir(parents=True)
    (validated / "events.parquet").write_text("a previous version")  # must not survive a failed gate
    overrides = ["validate.min_products=5", "validate.min_events=10"]
    with pytest.raises(DataValidationError) as info:
        run_stage("validate", overrides, workdir)
    for word in words:
        assert word in str(info.value), f"{word!r} not in error message:\n{info.value}"
    assert not validated.exists()
    assert not (workdir / "data" / "accepted_profile.json").exists()  # a failed version is never the reference
    with pytest.raises(FileNotFoundError):
        run_stage("sequences", overrides, workdir)
    assert not (workdir / "data" / "features" / "sequences.parquet").exists()
