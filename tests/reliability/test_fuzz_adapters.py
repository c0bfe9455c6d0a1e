"""Fuzzed input files for the data adapters: a complete load or a SourceError naming the file and line.

- S3-Rec text files (`user item item ...` per line): garbage tokens, lines with only a user,
  blank lines, tabs, unicode digits, negative and 20-digit ids, duplicated lines, bytes that are
  not UTF-8, empty files. An oracle written from the format's contract predicts the first bad
  line; a load must keep every (user, item) interaction of the file (nothing silently dropped).
- events tables (CSV): wrong column counts, empty files, header-only files, non-integer and
  unicode ids, empty cells, garbage / out-of-range / mixed-unit timestamps, duplicated rows. A
  load must hold one event per data row; an error must be a SourceError naming the file (and the
  line where the problem is in one).
- the validation gate (Great Expectations) on a few fuzzed tables that loaded: it returns a
  report and never crashes.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.data.adapters import SourceError
from pipelines.data.adapters.s3rec import read_s3rec
from pipelines.data.adapters.tables import read_tables

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
ID = re.compile(r"-?[0-9]+")

# ------------------------------------------------------------------------------ S3-Rec

token = st.one_of(
    st.integers(1, 30).map(str), st.integers(1, 30).map(str), st.integers(1, 30).map(str),
    st.integers(INT64_MIN - 5, INT64_MAX + 5).map(str), st.just(str(INT64_MAX)), st.just("99999999999999999999"),
    st.sampled_from(["x", "1.5", "١٢", "²", "1e3", "+4", "-", "é", "0x1f", "1_000", "NaN"]),
)
line_spec = st.one_of(
    st.lists(token, min_size=2, max_size=6), st.lists(token, min_size=2, max_size=6),
    st.lists(token, min_size=0, max_size=1),  # blank line or a user without items
    st.just(b"\xff\xfe 3 4"),  # not UTF-8
)


def _s3rec_bytes(lines: list, separator: str, duplicate: bool) -> bytes:
    if duplicate and lines:
        lines = [*lines, lines[0]]
    out = []
    for spec in lines:
        out.append(spec if isinstance(spec, bytes) else separator.join(spec).encode())
    return b"\n".join(out) + (b"\n" if out else b"")


def _s3rec_expected(data: bytes) -> tuple[int | None, str, list[tuple[int, int]]]:
    """(first bad line or None, what kind of problem, the (user, item) pairs the file holds)."""
    pairs: list[tuple[int, int]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            parts = raw.decode("utf-8").split()
        except UnicodeDecodeError:
            return number, "not UTF-8", pairs
        if not parts:
            continue
        if len(parts) < 2:
            return number, "a line needs a user", pairs
        for t in parts:
            if not (ID.fullmatch(t) and t.isascii() and INT64_MIN <= int(t) <= INT64_MAX):
                return number, "integer", pairs
        pairs.extend((int(parts[0]), int(t)) for t in parts[1:])
    if not pairs:
        return 0, "holds no interactions", pairs
    return None, "", pairs


@pytest.mark.reliability(kind="bad-input", name="S3-Rec sequence files with garbage lines")
def test_s3rec_files_load_completely_or_name_the_bad_line(ledger) -> None:
    tally: Counter[str] = Counter()
    folder = Path(tempfile.mkdtemp(prefix="fuzz_s3rec_"))

    @settings(FUZZ, max_examples=700)
    @given(lines=st.lists(line_spec, max_size=8), separator=st.sampled_from([" ", " ", "\t", "  "]),
           duplicate=st.booleans())
    def one(lines: list, separator: str, duplicate: bool) -> None:
        tally["cases"] += 1
        data = _s3rec_bytes(lines, separator, duplicate)
        path = folder / "Fuzz.txt"
        path.write_bytes(data)
        bad_line, problem, pairs = _s3rec_expected(data)
        try:
            world = read_s3rec(path)
        except SourceError as exc:
            message = str(exc)
            assert bad_line is not None, f"refused a valid file {data!r}: {message}"
            assert str(path) in message and problem in message, (data, message)
            if bad_line:
                assert f"{path}:{bad_line}:" in message, f"wrong line for {data!r}: {message}"
            tally["refused"] += 1
            return
        assert bad_line is None, f"accepted {data!r} (expected line {bad_line}: {problem})"
        # nothing silently dropped: every (user, item) pair of the file is an event
        source_item = dict(zip(world.catalogue["item_id"], world.catalogue["name"].str.removeprefix("item ")))
        users = sorted({u for u, _ in pairs})
        got = Counter((users[u - 1], int(source_item[i])) for u, i in zip(world.events["user_id"],
                                                                            world.events["item_id"]))
        assert got == Counter(pairs), (data, got, Counter(pairs))
        assert world.source["interactions"] == len(pairs)
        tally["loaded"] += 1
        tally["events"] += len(pairs)

    one()
    assert tally["loaded"] > 50 and tally["refused"] > 100, tally
    cases = tally.pop("cases")
    ledger.record(
        cases=cases,
        outcome=(f"{cases} fuzzed S3-Rec files: {tally['loaded']} loaded with all {tally['events']} "
                 f"interactions kept, {tally['refused']} refused with a SourceError naming file:line and the "
                 "problem (the line an independent oracle predicts), 0 crashes"),
        nothing_lost=True, nothing_promoted=True, **dict(tally),
    )


# ------------------------------------------------------------------------------ events tables

cell = {
    "user": st.one_of(st.integers(1, 5).map(str), st.sampled_from(["u1", "u2", "ü", "", "1.5", "-3"])),
    "item": st.one_of(st.integers(1, 9).map(str), st.sampled_from(["A", "B", "١", "", "99999999999999999999999",
                                                                    "-1", "x y"])),
    "ts": st.one_of(st.integers(1_600_000_000, 1_700_000_000).map(str),
                    st.integers(1_600_000_000_000, 1_700_000_000_000).map(str),
                    st.sampled_from(["2024-01-02", "2024-01-02T10:00:00Z", "", "yesterday", "1e30", "-1e20",
                                     "2024-13-45", "9999999999999999999999"])),
    "kind": st.sampled_from(["view", "purchase", "addtocart", "", "vïew", "1"]),
}


@st.composite
def events_files(draw: st.DrawFn) -> tuple[str, dict[str, int | None]]:
    """(CSV text, facts the oracle knows: data rows, the line of a row with extra fields)."""
    rows = draw(st.lists(st.tuples(cell["user"], cell["item"], cell["ts"], cell["kind"]), max_size=8))
    if rows and draw(st.booleans()):
        rows = rows + rows[: draw(st.integers(1, len(rows)))]  # duplicated rows
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    shape = draw(st.sampled_from(["ok"] * 6 + ["empty", "header_only", "extra_field", "missing_column"]))
    header = ["user_id", "item_id", "timestamp", "event_type"]
    if shape == "missing_column":
        header = ["user_id", "item_id", "event_type"]
        rows = [(u, i, k) for u, i, _, k in rows]
    if shape == "empty":
        return "", {"rows": 0, "extra_line": None, "shape": shape}
    writer.writerow(header)
    extra_line = None
    for n, row in enumerate(rows):
        if shape == "extra_field" and n == len(rows) // 2:
            row = (*row, "surplus")
            extra_line = n + 2
        writer.writerow(row)
    return buffer.getvalue(), {"rows": len(rows), "extra_line": extra_line, "shape": shape}


@pytest.mark.reliability(kind="bad-input", name="Events tables (CSV) with malformed rows and values")
def test_events_tables_load_every_row_or_name_the_file_and_line(ledger) -> None:
    tally: Counter[str] = Counter()
    folder = Path(tempfile.mkdtemp(prefix="fuzz_tables_"))
    loaded_worlds: list = []

    @settings(FUZZ, max_examples=400)
    @given(case=events_files())
    def one(case: tuple[str, dict]) -> None:
        text, facts = case
        tally["cases"] += 1
        path = folder / "events.csv"
        path.write_text(text, encoding="utf-8")
        try:
            world = read_tables(path)
        except SourceError as exc:
            message = str(exc)
            assert str(path) in message, f"the error does not name the file: {message}"
            if facts["shape"] == "empty":
                assert "is empty" in message, message
            elif facts["extra_line"] is not None:
                assert f"line {facts['extra_line']}" in message, (text, message)
            elif facts["shape"] == "missing_column":
                assert "timestamp" in message and "data.tables_columns" in message, message
            elif facts["rows"] == 0:
                assert "no rows" in message, message
            else:
                assert re.search(r"line \d+|no column|is empty|not a well-formed", message), message
            tally["refused"] += 1
            return
        assert facts["shape"] not in ("empty", "missing_column") and facts["extra_line"] is None and facts["rows"], \
            (text, "loaded")
        assert len(world.events) == facts["rows"], f"{facts['rows']} rows in, {len(world.events)} events out"
        assert world.source["interactions"] == facts["rows"]
        if len(world.events):
            assert world.events["user_id"].min() >= 1 and world.events["timestamp"].notna().sum() >= 0
        tally["loaded"] += 1
        tally["events"] += facts["rows"]
        if len(world.events) >= 3 and len(loaded_worlds) < 4:
            loaded_worlds.append(world)

    one()
    assert tally["loaded"] > 30 and tally["refused"] > 30, tally
    # the gate on fuzzed tables that loaded: a report, never a crash
    from pipelines.core.config import ValidateSettings
    from pipelines.validate import validate_tables

    gated = 0
    for world in loaded_worlds:
        report = validate_tables(world.catalogue, world.events, ValidateSettings(min_products=1, min_events=1))
        assert isinstance(report.success, bool) and report.checks, report
        gated += 1
    assert gated >= 1
    cases = tally.pop("cases")
    ledger.record(
        cases=cases + gated,
        outcome=(f"{cases} fuzzed events CSVs: {tally['loaded']} loaded with one event per data row "
                 f"({tally['events']} rows, none dropped), {tally['refused']} refused with a SourceError naming the "
                 f"file and the line; the validation gate reported on {gated} fuzzed tables without crashing"),
        nothing_lost=True, nothing_promoted=True, gate_runs=gated, **dict(tally),
    )


# ------------------------------------------------------------------------------ catalogue tables

catalogue_cell = {
    "item": st.one_of(st.integers(1, 9).map(str), st.sampled_from(["A", "", "١", "99999999999999999999999"])),
    # no NUL / bare CR / LF: csv.writer leaves a lone CR unquoted and every CSV reader takes it as a line break
    "name": st.one_of(st.text(max_size=6).map(lambda t: re.sub("[\x00\r\n]", "", t)), st.just("")),
    "price": st.sampled_from(["1.5", "0", "-3", "", "free", "1e400", "NaN"]),
    "launch": st.sampled_from(["2024-01-02", "1700000000", "", "soon", "1e30"]),
}
EVENTS_OK = "user_id,item_id,timestamp,event_type\n1,1,1700000000,view\n1,2,1700000060,purchase\n2,3,1700000100,view\n"


@pytest.mark.reliability(kind="bad-input", name="Catalogue tables (CSV) with malformed rows and values")
def test_catalogue_tables_keep_every_row_or_name_the_file(ledger) -> None:
    tally: Counter[str] = Counter()
    folder = Path(tempfile.mkdtemp(prefix="fuzz_catalogue_"))
    events_path = folder / "events.csv"
    events_path.write_text(EVENTS_OK)

    @settings(FUZZ, max_examples=250)
    @given(rows=st.lists(st.tuples(catalogue_cell["item"], catalogue_cell["name"], catalogue_cell["price"],
                                   catalogue_cell["launch"]), max_size=6),
           with_launch=st.booleans(), extra_field=st.booleans())
    def one(rows: list, with_launch: bool, extra_field: bool) -> None:
        tally["cases"] += 1
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["item_id", "name", "price", *(["launch_ts"] if with_launch else [])])
        for n, (item, name, price, launch) in enumerate(rows):
            row = [item, name, price, *([launch] if with_launch else [])]
            writer.writerow([*row, "surplus"] if extra_field and n == 0 else row)
        path = folder / "catalogue.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8")
        try:
            world = read_tables(events_path, path)
        except SourceError as exc:
            assert str(path) in str(exc) or str(events_path) in str(exc), f"names no file: {exc}"
            tally["refused"] += 1
            return
        assert not (extra_field and rows), "a row with a surplus field was loaded"
        assert len(world.catalogue) == len(rows), "catalogue rows lost"
        assert len(world.events) == 3, "events lost"
        tally["loaded"] += 1

    one()
    assert tally["loaded"] > 20 and tally["refused"] > 20, tally
    cases = tally.pop("cases")
    ledger.record(
        cases=cases,
        outcome=(f"{cases} fuzzed catalogue CSVs beside a good events file: {tally['loaded']} loaded with every "
                 f"catalogue row and event kept, {tally['refused']} refused with a SourceError naming the file, "
                 "0 crashes"),
        nothing_lost=True, nothing_promoted=True, **dict(tally),
    )
