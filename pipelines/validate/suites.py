"""Great Expectations suites for the catalogue and events tables (the contract in data/schema.py).

Two things are done outside GX on purpose:
- dtype families are checked with `pandas.api.types` (`column_problems`), because GX's
  `expect_column_values_to_be_in_type_list` misreads pandas 3 `str`, nullable `Int64` and tz-aware
  datetimes; the same check also tells which columns the value expectations can run on;
- cross-row / cross-table rules (session order, event after launch) become boolean columns of a
  *copy* of the frame (`prepare_events`), which GX then expects to be all true.

Every expectation carries `meta` (plain words, the table column it is about, and for derived
columns the columns to show as example rows) so the gate can write a readable report.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
from pandas.api import types as ptypes

from pipelines.core.config import ValidateSettings
from pipelines.data.schema import (
    CATALOGUE_COLUMNS,
    CATALOGUE_REQUIRED,
    EVENT_TYPES,
    EVENTS_COLUMNS,
    EVENTS_REQUIRED,
)

# Must be set before great_expectations is imported anywhere (it is read at import/context time).
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

if TYPE_CHECKING:  # GX takes ~2 s to import: only pay for it when a suite is built.
    import great_expectations as gx

CATALOGUE = "catalogue"
EVENTS = "events"

# Derived boolean columns added to the events copy; the leading underscore keeps them apart from data.
SESSION_ORDER_COL = "_ts_non_decreasing_in_session"
AFTER_LAUNCH_COL = "_ts_not_before_launch"
PREV_TS_COL = "_previous_ts_in_session"
LAUNCH_TS_COL = "_item_launch_ts"

# How far before the earliest launch an event may lie (clock skew, launch dates rounded to a day).
LAUNCH_SLACK = pd.Timedelta(days=1)
# The catalogue's ids go in at validate time as a suite parameter, not into the suite itself.
KNOWN_IDS_PARAM = "catalogue_item_ids"


# --------------------------------------------------------------------------- dtypes / schema
def _is_str(series: pd.Series) -> bool:
    """pandas 3 `str`/`string`, categorical of strings, or object columns holding only strings/nulls."""
    if isinstance(series.dtype, pd.StringDtype):
        return True
    if isinstance(series.dtype, pd.CategoricalDtype):  # parquet/arrow often hands strings back so
        return _is_str(pd.Series(series.dtype.categories))
    if ptypes.is_object_dtype(series.dtype):
        return ptypes.infer_dtype(series, skipna=True) in ("string", "empty")
    return False


def _is_int(series: pd.Series) -> bool:
    return ptypes.is_integer_dtype(series.dtype) and not ptypes.is_bool_dtype(series.dtype)


def _is_real(series: pd.Series) -> bool:
    """A float column; integers are accepted too (a price of 12 is still a price)."""
    return ptypes.is_numeric_dtype(series.dtype) and not ptypes.is_bool_dtype(series.dtype)


DTYPE_FAMILIES: dict[str, Callable[[pd.Series], bool]] = {
    "int": _is_int,
    "float": _is_real,
    "bool": lambda s: ptypes.is_bool_dtype(s.dtype),
    "str": _is_str,
    "datetime": lambda s: ptypes.is_datetime64_any_dtype(s.dtype),
}


def dtype_matches(series: pd.Series, family: str) -> bool:
    """Whether a column's dtype belongs to a contract family ("int", "float", "bool", "str", "datetime")."""
    return DTYPE_FAMILIES[family](series)


def _values_usable(series: pd.Series, family: str) -> bool:
    """Whether value expectations can still run: the right family, or an int column that turned
    float only because it holds nulls (so the null check can still say so)."""
    if dtype_matches(series, family):
        return True
    return family == "int" and ptypes.is_float_dtype(series.dtype)


@dataclass
class ColumnProblems:
    """What the schema check found for one table, and which columns value checks may touch."""

    missing: list[str] = field(default_factory=list)
    wrong_dtype: dict[str, tuple[str, str]] = field(default_factory=dict)  # col -> (expected, actual)
    present: set[str] = field(default_factory=set)
    typed: set[str] = field(default_factory=set)  # present and safe for value expectations


def column_problems(df: pd.DataFrame, contract: dict[str, str]) -> ColumnProblems:
    """Check presence and dtype family of every contract column without touching GX."""
    out = ColumnProblems()
    for col, family in contract.items():
        if col not in df.columns:
            out.missing.append(col)
            continue
        out.present.add(col)
        series = df[col]
        if not dtype_matches(series, family):
            out.wrong_dtype[col] = (family, str(series.dtype))
        if _values_usable(series, family):
            out.typed.add(col)
    return out


# --------------------------------------------------------------------------- derived frames
def to_utc_naive(series: pd.Series) -> pd.Series:
    """Timestamps as UTC without tz, so tz-aware and naive tables compare (naive is taken as UTC)."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC").dt.tz_localize(None)
    return series


def prepare_catalogue(catalogue: pd.DataFrame, problems: ColumnProblems) -> pd.DataFrame:
    """A copy of the catalogue with launch_ts in UTC-naive form (the input is left as it was)."""
    frame = catalogue.copy()
    if "launch_ts" in problems.typed:
        frame["launch_ts"] = to_utc_naive(frame["launch_ts"])
    return frame


def prepare_events(
    events: pd.DataFrame,
    catalogue: pd.DataFrame,
    problems: ColumnProblems,
    catalogue_problems: ColumnProblems,
) -> pd.DataFrame:
    """A copy of the events with UTC-naive timestamps and the derived boolean check columns.

    `catalogue` must already be prepared (UTC-naive launch_ts). Rows whose inputs are null or
    unknown count as "ok" here: the null and in-catalogue checks report those once, not twice.
    """
    frame = events.copy()
    if "timestamp" not in problems.typed:
        return frame
    ts = to_utc_naive(frame["timestamp"])
    frame["timestamp"] = ts
    if "session_id" in problems.present:
        # Vectorised: previous timestamp of the same session in frame order.
        prev = ts.groupby(frame["session_id"], sort=False, dropna=False).shift(1)
        frame[PREV_TS_COL] = prev
        frame[SESSION_ORDER_COL] = (prev.isna() | ts.isna() | (ts >= prev)).astype(bool)
    if {"item_id"} <= problems.typed and {"item_id", "launch_ts"} <= catalogue_problems.typed:
        launch = (
            catalogue.dropna(subset=["item_id"]).drop_duplicates("item_id").set_index("item_id")["launch_ts"]
        )
        item_launch = frame["item_id"].map(launch)
        frame[LAUNCH_TS_COL] = item_launch
        frame[AFTER_LAUNCH_COL] = (item_launch.isna() | ts.isna() | (ts >= item_launch)).astype(bool)
    return frame


# --------------------------------------------------------------------------- suites
@dataclass
class SuiteBuild:
    """A suite plus the checks left out because a column they need is missing or mistyped."""

    suite: gx.ExpectationSuite
    skipped: list[dict[str, Any]] = field(default_factory=list)


class _Builder:
    """Adds an expectation only when its columns are usable; remembers what it skipped and why."""

    def __init__(self, name: str, table: str, problems: ColumnProblems) -> None:
        import great_expectations as gx

        self.table = table
        self.problems = problems
        self.build = SuiteBuild(suite=gx.ExpectationSuite(name=name))

    def add(
        self,
        expectation_cls: type,
        plain: str,
        *,
        column: str | None = None,
        report_column: str | None = None,
        needs_present: Iterable[str] = (),
        needs_typed: Iterable[str] = (),
        example_columns: list[str] | None = None,
        drift: bool = False,
        **kwargs: Any,
    ) -> None:
        report_column = report_column or column
        if column is not None:
            kwargs["column"] = column
        present, typed = list(needs_present), list(needs_typed)
        blocked = [c for c in present if c not in self.problems.present]
        blocked += [c for c in typed if c not in self.problems.typed and c not in blocked]
        if blocked:
            self.build.skipped.append(
                {
                    "table": self.table,
                    "expectation": _expectation_type(expectation_cls),
                    "column": report_column,
                    "plain": plain,
                    "reason": f"needs usable column(s) {', '.join(blocked)}",
                }
            )
            return
        meta: dict[str, Any] = {"table": self.table, "plain": plain, "column": report_column}
        if example_columns:
            meta["example_columns"] = example_columns
        if drift:  # compares with the accepted profile: the report shows the observed value
            meta["drift"] = True
        self.build.suite.add_expectation(expectation_cls(meta=meta, **kwargs))


def _expectation_type(expectation_cls: type) -> str:
    """CamelCase class name -> GX snake_case expectation type (for skipped-check records)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", expectation_cls.__name__).lower()


def _common_column_checks(b: _Builder, contract: dict[str, str], required: Iterable[str], table: str) -> None:
    import great_expectations.expectations as gxe

    b.add(
        gxe.ExpectTableColumnsToMatchSet,
        f"{table} must have all contract columns (any order, extras allowed)",
        column_set=list(contract),
        exact_match=False,
    )
    for col in required:
        b.add(
            gxe.ExpectColumnValuesToNotBeNull,
            f"{col} must not be null",
            column=col,
            needs_present=[col],
        )


def _item_ids_from_one(b: _Builder) -> None:
    """Item ids start at 1 in both tables: 0 is the padding token of every served sequence."""
    import great_expectations.expectations as gxe

    b.add(
        gxe.ExpectColumnValuesToBeBetween,
        "item_id must be >= 1 (0 is the padding token)",
        column="item_id",
        needs_typed=["item_id"],
        min_value=1,
    )


def build_catalogue_suite(settings: ValidateSettings, problems: ColumnProblems) -> SuiteBuild:
    """Catalogue: contract columns, required fields filled, unique ids from 1, positive prices."""
    import great_expectations.expectations as gxe

    b = _Builder("catalogue", CATALOGUE, problems)
    b.add(
        gxe.ExpectTableRowCountToBeBetween,
        f"catalogue must have at least {settings.min_products} products (validate.min_products)",
        min_value=settings.min_products,
    )
    _common_column_checks(b, CATALOGUE_COLUMNS, CATALOGUE_REQUIRED, CATALOGUE)
    b.add(
        gxe.ExpectColumnValuesToBeUnique,
        "item_id must be unique",
        column="item_id",
        needs_present=["item_id"],
    )
    _item_ids_from_one(b)
    b.add(
        gxe.ExpectColumnValuesToBeBetween,
        "price must be > 0",
        column="price",
        needs_typed=["price"],
        min_value=0,
        strict_min=True,
    )
    b.add(
        gxe.ExpectColumnValueLengthsToBeBetween,
        "name must not be empty",
        column="name",
        needs_typed=["name"],
        min_value=1,
    )
    return b.build


def build_events_suite(
    settings: ValidateSettings,
    problems: ColumnProblems,
    *,
    known_item_ids: list[int] | None,
    ts_min: pd.Timestamp | None,
    ts_max: pd.Timestamp,
    derived_columns: Iterable[str],
) -> SuiteBuild:
    """Events: contract columns, known event types and items, sane and ordered timestamps.

    `known_item_ids` is None when the catalogue's item_id cannot be used (the membership check is
    then skipped); `ts_min` is None when the catalogue has no usable launch_ts.
    """
    import great_expectations.expectations as gxe

    derived = set(derived_columns)
    b = _Builder("events", EVENTS, problems)
    b.add(
        gxe.ExpectTableRowCountToBeBetween,
        f"events must have at least {settings.min_events} rows (validate.min_events)",
        min_value=settings.min_events,
    )
    _common_column_checks(b, EVENTS_COLUMNS, EVENTS_REQUIRED, EVENTS)
    _item_ids_from_one(b)
    b.add(
        gxe.ExpectColumnValuesToBeInSet,
        f"event_type must be one of {', '.join(EVENT_TYPES)}",
        column="event_type",
        needs_typed=["event_type"],
        value_set=list(EVENT_TYPES),
    )
    allowed_unknown = settings.max_unknown_item_share
    known_plain = "item_id must exist in the catalogue" + (
        f" (up to {allowed_unknown:.1%} unknown allowed, validate.max_unknown_item_share)"
        if allowed_unknown > 0
        else ""
    )
    if known_item_ids is None:
        b.build.skipped.append(
            {
                "table": EVENTS,
                "expectation": "expect_column_values_to_be_in_set",
                "column": "item_id",
                "plain": known_plain,
                "reason": "needs a usable catalogue.item_id",
            }
        )
    else:
        b.add(
            gxe.ExpectColumnValuesToBeInSet,
            known_plain,
            column="item_id",
            needs_typed=["item_id"],
            value_set={"$PARAMETER": KNOWN_IDS_PARAM},
            mostly=1.0 - allowed_unknown,
        )
    window = (
        f"between {ts_min} and {ts_max} UTC (earliest launch - 1 day .. now)"
        if ts_min is not None
        else f"at or before {ts_max} UTC (now)"
    )
    b.add(
        gxe.ExpectColumnValuesToBeBetween,
        f"timestamp must lie {window}",
        column="timestamp",
        needs_typed=["timestamp"],
        min_value=ts_min,
        max_value=ts_max,
    )
    for col, plain, examples, needs in (
        (
            SESSION_ORDER_COL,
            "timestamps must not decrease within a session (in row order)",
            ["session_id", "item_id", PREV_TS_COL, "timestamp"],
            ["timestamp", "session_id"],
        ),
        (
            AFTER_LAUNCH_COL,
            "an event's timestamp must not be before its item's launch_ts",
            ["session_id", "item_id", "timestamp", LAUNCH_TS_COL],
            ["timestamp", "item_id"],
        ),
    ):
        if col not in derived:
            b.build.skipped.append(
                {
                    "table": EVENTS,
                    "expectation": "expect_column_values_to_be_in_set",
                    "column": "timestamp",
                    "plain": plain,
                    "reason": f"needs usable column(s) {', '.join(needs)} (and catalogue launch_ts)",
                }
            )
            continue
        b.add(
            gxe.ExpectColumnValuesToBeInSet,
            plain,
            column=col,
            value_set=[True],
            report_column="timestamp",  # report under the real column, not the helper one
            example_columns=examples,
        )
    return b.build
