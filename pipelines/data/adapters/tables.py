"""Generic events + catalogue tables (CSV or Parquet) with a column mapping.

`columns` maps an internal column to the name in your files (`{"user_id": "visitorid"}`);
unmapped internal columns are looked up under their own name. Events need user_id, item_id and
timestamp; session_id is derived when absent (a new session after 30 minutes of inactivity);
event_type defaults to `view`, and `event_types` maps your labels to the internal ones. Labels
left unmapped stay as they are, so the gate reports them rather than the adapter hiding them.

Item ids become dense from 1: catalogue items first (in sorted source-id order), then items that
appear only in the events (ids after the catalogue's, so the gate sees them as unknown).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.generate import World
from pipelines.data.schema import CATALOGUE_COLUMNS, CATALOGUE_OPTIONAL, EVENTS_COLUMNS

SESSION_GAP = pd.Timedelta(minutes=30)
PLACEHOLDER_PRICE = 1.0


def _is_parquet(path: Path) -> bool:
    """Parquet by the file's last suffix(es); CSV/TSV otherwise (their rows have line numbers)."""
    return "".join(path.suffixes).lower().endswith((".parquet", ".pq"))


def _read(path: Path) -> pd.DataFrame:
    from pipelines.data.adapters import SourceError

    suffixes = "".join(path.suffixes).lower()
    try:
        if _is_parquet(path):
            return pd.read_parquet(path)
        if ".csv" in suffixes or ".tsv" in suffixes:
            # index_col=False: never turn surplus leading fields into an index (that shifts every column);
            # the warning pandas gives when it would drop surplus fields becomes the error below.
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                return pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",", index_col=False)
    except pd.errors.ParserWarning as exc:
        raise SourceError(f"{path}: line 2 (the first row) has more fields than the header line; every row needs "
                          "exactly the header's columns") from exc
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"{path} is empty: it needs a header line and at least one row") from exc
    except pd.errors.ParserError as exc:  # e.g. "Expected 4 fields in line 7, saw 5"
        raise SourceError(f"{path}: not a well-formed table: {str(exc).strip()}; every row needs the header's "
                          "columns") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except (OSError, ValueError) as exc:  # a corrupt Parquet file, an unreadable file
        raise SourceError(f"{path}: cannot be read as {suffixes or 'a table'}: {exc}") from exc
    raise SourceError(f"{path}: unsupported file type {suffixes!r}; use .csv, .tsv or .parquet")


def _rename(frame: pd.DataFrame, columns: dict[str, str], contract: dict[str, str], path: Path) -> pd.DataFrame:
    """Internal names for the mapped columns; errors name the mapping and the columns the file has."""
    from pipelines.data.adapters import SourceError

    known = set(EVENTS_COLUMNS) | set(CATALOGUE_COLUMNS) | set(CATALOGUE_OPTIONAL)
    unknown = [k for k in columns if k not in known]
    if unknown:
        raise SourceError(f"data.tables_columns names unknown internal column(s) {unknown}; "
                          f"internal columns are {sorted(known)}")
    rename = {}
    for internal in contract:
        src = columns.get(internal, internal)
        if src in frame.columns:
            rename[src] = internal
        elif internal in columns:
            raise SourceError(f"{path}: column {src!r} (mapped to {internal}) not found; "
                              f"the file has {list(frame.columns)}")
    return frame[list(rename)].rename(columns=rename)


def _row_label(position: int, path: Path | None) -> str:
    """Where row `position` (0-based, file order) is: a line number for CSV/TSV (header = line 1)."""
    if path is not None and not _is_parquet(path):
        return f"line {position + 2}"
    return f"row {position + 1}"


def _to_timestamp(values: pd.Series, what: str, path: Path | None = None) -> pd.Series:
    """Unix seconds / milliseconds or date text -> UTC-naive datetime64[us]; the first unreadable value is named.

    Empty cells stay missing (NaT) for the gate to report; a value that is there but is not a
    timestamp (text, or a number outside 1677..2262) is an error naming its line.
    """
    from pipelines.data.adapters import SourceError

    values = values.reset_index(drop=True)
    if pd.api.types.is_bool_dtype(values.dtype):
        raise SourceError(f"{what}: holds true/false values, not timestamps; map the timestamp column")
    if pd.api.types.is_numeric_dtype(values.dtype):
        finite = values.dropna().abs()
        unit = "ms" if len(finite) and finite.median() > 1e11 else "s"
        numbers = values.astype("float64")
        seconds = numbers / (1000 if unit == "ms" else 1)
        in_range = seconds.abs() < 9.2e9  # datetime64 spans about 1677..2262
        with np.errstate(all="ignore"):
            out = pd.to_datetime(numbers.where(in_range), unit=unit, utc=True, errors="coerce")
    else:  # text: numbers written as text are unix times too, the rest date text
        numbers = pd.to_numeric(values, errors="coerce")
        texts = values.where(numbers.isna()).astype("object")
        try:
            out = pd.to_datetime(texts, utc=True, format="mixed", errors="coerce")
        except (ValueError, TypeError, OverflowError) as exc:
            raise SourceError(f"{what}: cannot read timestamps ({exc})") from exc
        if numbers.notna().any():
            out = out.where(numbers.isna(), _to_timestamp(numbers, what, path).dt.tz_localize("UTC"))
    bad = out.isna() & values.notna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        value = values.iloc[first]
        value = value.item() if isinstance(value, np.generic) else value
        raise SourceError(f"{what}: {_row_label(first, path)} has {value!r:.60}, not a timestamp "
                          f"({int(bad.sum())} such value(s)); use unix seconds/milliseconds or ISO dates")
    return out.dt.tz_localize(None).astype("datetime64[us]")


def read_tables(events_path: Path, catalogue_path: Path | None = None, *, columns: dict[str, str] | None = None,
                event_types: dict[str, str] | None = None, dataset: str = "") -> World:
    """Read events (+ catalogue) files into the internal tables."""
    from pipelines.data.adapters import SourceError, file_md5

    columns = dict(columns or {})
    raw_events = _rename(_read(events_path), columns, EVENTS_COLUMNS, events_path)
    need = [c for c in ("user_id", "item_id", "timestamp") if c not in raw_events.columns]
    if need:
        raise SourceError(f"{events_path}: no column for {need}; map them in data.tables_columns "
                          f"(internal -> your column name)")
    if raw_events.empty:
        raise SourceError(f"{events_path} has a header but no rows: there are no events to read")
    events = raw_events.reset_index(drop=True)
    events["timestamp"] = _to_timestamp(events["timestamp"], f"{events_path} column "
                                                             f"{columns.get('timestamp', 'timestamp')!r}", events_path)
    if events["item_id"].isna().all():
        raise SourceError(f"{events_path}: column {columns.get('item_id', 'item_id')!r} is empty in every row; "
                          "map the item id column in data.tables_columns")
    missing_users = events["user_id"].isna()
    if missing_users.any():  # factorize would give them a made-up user: report them instead
        first = int(np.flatnonzero(missing_users.to_numpy())[0])
        raise SourceError(f"{events_path}: column {columns.get('user_id', 'user_id')!r} is empty at "
                          f"{_row_label(first, events_path)} ({int(missing_users.sum())} row(s)); every event needs a user")
    if catalogue_path is not None:
        raw_catalogue = _rename(_read(catalogue_path), columns, {**CATALOGUE_COLUMNS, **CATALOGUE_OPTIONAL},
                                catalogue_path)
        if "item_id" not in raw_catalogue.columns:
            raise SourceError(f"{catalogue_path}: no item id column; map it in data.tables_columns")
    else:
        raw_catalogue = pd.DataFrame({"item_id": pd.unique(events["item_id"].dropna())})
    # Dense ids: catalogue items first (duplicates keep one id, the gate reports them), then unknown ones.
    cat_src = raw_catalogue["item_id"]
    known = pd.Index(pd.unique(cat_src.dropna())).sort_values()
    extra = pd.Index(pd.unique(events["item_id"].dropna())).difference(known).sort_values()
    ids = pd.Series(np.arange(1, len(known) + len(extra) + 1, dtype=np.int64), index=known.append(extra))
    events["item_id"] = events["item_id"].map(ids).astype("Int64")
    events["user_id"] = (pd.factorize(events["user_id"], sort=True)[0] + 1).astype(np.int64)
    if "event_type" in events.columns:
        labels = events["event_type"].astype("str")
        events["event_type"] = labels.map(lambda v: (event_types or {}).get(v, v)).astype("str")
    else:
        events["event_type"] = pd.array(["view"] * len(events), dtype="str")
    events = events.sort_values(["user_id", "timestamp"], kind="stable")
    if "session_id" not in events.columns:
        gap = events["timestamp"].diff() > SESSION_GAP
        new_user = events["user_id"].diff() != 0
        events["session_id"] = (gap | new_user).cumsum().astype(np.int64)
    else:
        events["session_id"] = (pd.factorize(events["session_id"], sort=True)[0] + 1).astype(np.int64)
    if not events["item_id"].isna().any():
        events["item_id"] = events["item_id"].astype(np.int64)
    events = events.sort_values(["timestamp", "session_id"], kind="stable").reset_index(drop=True)

    catalogue = raw_catalogue.copy()
    catalogue["source_item_id"] = catalogue["item_id"]
    catalogue["item_id"] = catalogue["item_id"].map(ids).astype("Int64")
    placeholders: dict[str, str] = {}
    for col in CATALOGUE_COLUMNS:
        if col in catalogue.columns:
            continue
        if col == "name":
            catalogue[col] = pd.array([f"item {v}" for v in catalogue["source_item_id"]], dtype="str")
            placeholders[col] = "item <source id>"
        elif col == "price":
            catalogue[col] = PLACEHOLDER_PRICE
            placeholders[col] = str(PLACEHOLDER_PRICE)
        elif col == "launch_ts":
            first = events.groupby("item_id")["timestamp"].min()
            fallback = events["timestamp"].min() - pd.Timedelta(days=1)
            catalogue[col] = catalogue["item_id"].map(first).fillna(fallback).astype("datetime64[us]")
            placeholders[col] = "the item's first event"
        elif col == "rx_required":
            catalogue[col] = False
        else:
            catalogue[col] = pd.Series([None] * len(catalogue), dtype="str")
    if "launch_ts" not in placeholders:
        catalogue["launch_ts"] = _to_timestamp(catalogue["launch_ts"], f"{catalogue_path} launch_ts",
                                               catalogue_path).to_numpy()
    if not catalogue["item_id"].isna().any():
        catalogue["item_id"] = catalogue["item_id"].astype(np.int64)
    catalogue = catalogue.sort_values("item_id", kind="stable").reset_index(drop=True)
    files = {events_path.name: file_md5(events_path)}
    if catalogue_path is not None:
        files[catalogue_path.name] = file_md5(catalogue_path)
    source = {
        "source": "tables",
        "dataset": dataset or events_path.name.split(".")[0],
        "signature": f"tables:{events_path.name}:{catalogue_path.name if catalogue_path else '-'}",
        "files": files,
        "users": int(events["user_id"].nunique()),
        "items": len(known),
        "items_only_in_events": len(extra),
        "interactions": len(events),
        "placeholders": placeholders,
    }
    optional = [col for col in CATALOGUE_OPTIONAL if col in catalogue.columns]
    for col in optional:
        where = f"{catalogue_path} {col}"
        catalogue[col] = (_optional_flag(catalogue[col], where) if CATALOGUE_OPTIONAL[col] == "bool"
                          else _optional_codes(catalogue[col], where, catalogue["source_item_id"]))
    return World(catalogue=catalogue[[*CATALOGUE_COLUMNS, *optional]], events=events[list(EVENTS_COLUMNS)],
                 source=source)


_TRUE, _FALSE = frozenset({"true", "1", "yes", "y", "t"}), frozenset({"false", "0", "no", "n", "f"})
_CODE = re.compile(r"^[0-9A-Za-z]{1,10}$")


def _optional_codes(values: pd.Series, where: str, products: pd.Series) -> pd.Series:
    """A sparse pipe-separated list of region codes ("110|400"): blank stays null (everywhere); a code that is
    not 1-10 letters or digits is refused, naming the product (its id in the source)."""
    from pipelines.data.adapters import SourceError

    out = []
    for product, value in zip(products.tolist(), values.tolist(), strict=True):
        text = "" if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else str(value)
        codes = [c.strip().upper() for c in text.split("|") if c.strip()]
        bad = [c for c in codes if not _CODE.match(c)]
        if bad:
            raise SourceError(f"{where}: product {str(product)[:40]!r} holds {bad[0][:40]!r}, not a region code "
                              "(1-10 letters or digits, pipe-separated: 110|400)")
        out.append("|".join(codes) if codes else None)
    return pd.Series(out, index=values.index, dtype="str")


def _optional_flag(values: pd.Series, where: str) -> pd.Series:
    """A sparse yes/no column as pandas' nullable boolean: blank stays null (allowed), anything else is refused."""
    from pipelines.data.adapters import SourceError

    def parse(value: object) -> object:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return pd.NA
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        text = str(value).strip().lower()
        if not text:
            return pd.NA
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise SourceError(f"{where}: value {str(value)[:40]!r} is not a yes/no flag (true/false, 1/0, yes/no, blank)")

    return values.map(parse).astype("boolean")
