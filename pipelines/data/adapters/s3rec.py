"""The S3-Rec / SASRec sequence format: one line per user, `user_id item_1 item_2 ...` in time order.

The files carry no timestamps, sessions, prices or names, so the adapter synthesises what the
internal tables need and says so in source.json:
- timestamps keep the order: one hour per position from S3REC_START (2014, the Amazon crawl);
- each user's line is one session; every interaction is a `purchase` (reviews follow purchases);
- item and user ids become dense from 1 in order of first appearance of their source ids sorted
  numerically; the source id stays readable in the product name (`item 123`);
- `item2attributes.json` (`{"item": [attr, ...]}`) fills `tags` (`a12|a40`); price is a
  placeholder 1.0 (the gate needs a positive price), launch_ts one day before the first event.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.generate import World
from pipelines.data.schema import CATALOGUE_COLUMNS

S3REC_START = pd.Timestamp("2014-01-01")
STEP = pd.Timedelta(hours=1)
PLACEHOLDER_PRICE = 1.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# A line of plain ids (what every well-formed file holds): converted in one go, not token by token.
_PLAIN_ID_LINE = re.compile(r"\s*-?[0-9]{1,19}(?:\s+-?[0-9]{1,19})+\s*", re.ASCII)


def _is_int_text(token: str) -> bool:
    """ASCII digits with an optional leading minus (what int() would read, without its extras)."""
    digits = token.removeprefix("-")
    return digits.isascii() and digits.isdigit()


def _source_id(token: str, path: Path, number: int, what: str) -> int:
    """One id token of a line: ASCII digits (optional minus) that fit int64; else an error naming the line."""
    from pipelines.data.adapters import SourceError

    if not _is_int_text(token):
        raise SourceError(f"{path}:{number}: {what} {token[:40]!r} is not an integer ({what}s must be integers; "
                          "each line is `user_id item_id item_id ...` separated by spaces)")
    value = int(token) if len(token.removeprefix("-")) <= 19 else INT64_MAX + 1
    if not INT64_MIN <= value <= INT64_MAX:
        raise SourceError(f"{path}:{number}: {what} {token[:40]} does not fit a 64-bit integer")
    return value


def _plain_ids(line: str, parts: list[str]) -> list[int] | None:
    """The line's ids when it is plain ASCII integers that fit int64 (what _source_id accepts), else None."""
    if not _PLAIN_ID_LINE.fullmatch(line):
        return None
    ids = list(map(int, parts))
    return ids if INT64_MIN <= min(ids) and max(ids) <= INT64_MAX else None


def _parse_lines(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source user per interaction, source item per interaction, position in the user's line)."""
    from pipelines.data.adapters import SourceError

    users: list[int] = []
    lengths: list[int] = []
    items: list[int] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SourceError(f"{path}:{number}: not UTF-8 text ({exc.reason} at column {exc.start + 1}); "
                                  "S3-Rec files hold ASCII ids separated by spaces") from exc
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise SourceError(f"{path}:{number}: a line needs a user and at least one item, "
                                  f"got {line.strip()[:60]!r}")
            ids = _plain_ids(line, parts)
            if ids is None:  # something unusual: check token by token, naming the first bad one
                ids = [_source_id(parts[0], path, number, "user id"),
                       *(_source_id(token, path, number, "item id") for token in parts[1:])]
            users.append(ids[0])
            lengths.append(len(ids) - 1)
            items.extend(ids[1:])
    if not users:
        raise SourceError(f"{path} holds no interactions (empty, or only blank lines)")
    item_ids = np.array(items, dtype=np.int64)
    counts = np.array(lengths)
    positions = np.arange(len(item_ids)) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(np.array(users, dtype=np.int64), counts), item_ids, positions


def read_s3rec(path: Path, attributes: Path | None = None, dataset: str = "") -> World:
    """Read `Beauty.txt`-style sequences (+ optional item2attributes.json) into the internal tables."""
    from pipelines.data.adapters import SourceError, file_md5

    src_users, src_items, positions = _parse_lines(path)
    user_codes, user_uniques = pd.factorize(src_users, sort=True)
    item_codes, item_uniques = pd.factorize(src_items, sort=True)
    n_items = len(item_uniques)
    timestamps = S3REC_START + pd.to_timedelta(positions, unit="h")
    events = pd.DataFrame(
        {
            "user_id": (user_codes + 1).astype(np.int64),
            "session_id": (user_codes + 1).astype(np.int64),
            "item_id": (item_codes + 1).astype(np.int64),
            "event_type": pd.array(["purchase"] * len(src_items), dtype="str"),
            "timestamp": pd.DatetimeIndex(timestamps).astype("datetime64[us]"),
        }
    ).sort_values(["timestamp", "session_id"], kind="stable").reset_index(drop=True)
    tags: list[str | None] = [None] * n_items
    n_with_attributes = 0
    if attributes is not None:
        try:
            mapping = json.loads(attributes.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SourceError(f"{attributes} is not valid JSON: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise SourceError(f"{attributes} is not UTF-8 text: {exc}") from exc
        if not isinstance(mapping, dict):
            raise SourceError(f"{attributes} must map item id -> list of attribute ids")
        index = {int(v): i for i, v in enumerate(item_uniques)}
        for key, attrs in mapping.items():
            if not _is_int_text(key):
                raise SourceError(f"{attributes}: key {key[:40]!r} is not an item id (integer text, e.g. \"12\")")
            if not isinstance(attrs, list) or not all(isinstance(a, (int, str)) and not isinstance(a, bool)
                                                      for a in attrs):
                raise SourceError(f"{attributes}: item {key[:40]}: attributes must be a list of attribute ids "
                                  f"(integers or strings), got {json.dumps(attrs)[:60]}")
            i = index.get(int(key)) if len(key.removeprefix("-")) <= 19 else None
            if i is not None and attrs:
                tags[i] = "|".join(f"a{a}" for a in attrs)
                n_with_attributes += 1
    catalogue = pd.DataFrame({col: pd.Series([None] * n_items, dtype="str") for col in CATALOGUE_COLUMNS})
    catalogue["item_id"] = np.arange(1, n_items + 1, dtype=np.int64)
    catalogue["name"] = pd.array([f"item {v}" for v in item_uniques], dtype="str")
    catalogue["tags"] = pd.array(tags, dtype="str")
    catalogue["price"] = PLACEHOLDER_PRICE
    catalogue["rx_required"] = False
    catalogue["launch_ts"] = pd.Series(S3REC_START - pd.Timedelta(days=1), index=catalogue.index).astype(
        "datetime64[us]")
    source = {
        "source": "s3rec",
        "dataset": dataset or path.stem,
        "signature": f"s3rec:{path.name}",
        "files": {path.name: file_md5(path), **({attributes.name: file_md5(attributes)} if attributes else {})},
        "users": len(user_uniques),
        "items": n_items,
        "interactions": len(events),
        "items_with_attributes": n_with_attributes,
        "synthesised": {"timestamp": f"{S3REC_START.isoformat()} + 1 h per position in the user's line",
                        "session_id": "one session per user", "event_type": "purchase",
                        "price": PLACEHOLDER_PRICE, "launch_ts": "1 day before the first event"},
    }
    return World(catalogue=catalogue[list(CATALOGUE_COLUMNS)], events=events, source=source)
