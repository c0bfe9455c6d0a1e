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

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.generate import World
from pipelines.data.schema import CATALOGUE_COLUMNS, EVENTS_COLUMNS

SESSION_GAP = pd.Timedelta(minutes=30)
PLACEHOLDER_PRICE = 1.0


def _read(path: Path) -> pd.DataFrame:
    from pipelines.data.adapters import SourceError

    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    if ".csv" in suffixes or ".tsv" in suffixes:
        return pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",")
    raise SourceError(f"{path}: unsupported file type {suffixes!r}; use .csv, .tsv or .parquet")


def _rename(frame: pd.DataFrame, columns: dict[str, str], contract: dict[str, str], path: Path) -> pd.DataFrame:
    """Internal names for the mapped columns; errors name the mapping and the columns the file has."""
    from pipelines.data.adapters import SourceError

    unknown = [k for k in columns if k not in EVENTS_COLUMNS and k not in CATALOGUE_COLUMNS]
    if unknown:
        raise SourceError(f"data.tables_columns names unknown internal column(s) {unknown}; "
                          f"internal columns are {sorted(set(EVENTS_COLUMNS) | set(CATALOGUE_COLUMNS))}")
    rename = {}
    for internal in contract:
        src = columns.get(internal, internal)
        if src in frame.columns:
            rename[src] = internal
        elif internal in columns:
            raise SourceError(f"{path}: column {src!r} (mapped to {internal}) not found; "
                              f"the file has {list(frame.columns)}")
    return frame[list(rename)].rename(columns=rename)


def _to_timestamp(values: pd.Series, what: str) -> pd.Series:
    """Unix seconds / milliseconds or date text -> UTC-naive datetime64[us]."""
    from pipelines.data.adapters import SourceError

    if pd.api.types.is_numeric_dtype(values.dtype):
        unit = "ms" if values.dropna().abs().median() > 1e11 else "s"
        out = pd.to_datetime(values, unit=unit, utc=True)
    else:
        try:
            out = pd.to_datetime(values, utc=True, format="mixed")
        except (ValueError, TypeError) as exc:
            raise SourceError(f"{what}: cannot read timestamps ({exc})") from exc
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
    events = raw_events.copy()
    events["timestamp"] = _to_timestamp(events["timestamp"], f"{events_path} column "
                                                             f"{columns.get('timestamp', 'timestamp')!r}")
    if catalogue_path is not None:
        raw_catalogue = _rename(_read(catalogue_path), columns, CATALOGUE_COLUMNS, catalogue_path)
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
        catalogue["launch_ts"] = _to_timestamp(catalogue["launch_ts"], f"{catalogue_path} launch_ts")
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
    return World(catalogue=catalogue[list(CATALOGUE_COLUMNS)], events=events[list(EVENTS_COLUMNS)],
                 source=source)
