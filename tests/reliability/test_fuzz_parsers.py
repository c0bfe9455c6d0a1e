"""Fuzzed input to the in-process parsers: a valid result or the documented exception with a clear message.

- the client's request builders (pipelines/serve/client.py): pad_sessions, kind_codes,
  session_inputs (the `recommend` inputs) and item_batch (the `similar_items` input) take any
  Python value; they return well-formed int64 arrays or raise ValueError naming the session /
  item and the rule;
- the CLI's --session/--purchased id lists and --events (pipelines/cli.py): any text gives ids or
  exits with a message naming the option;
- `--set` overrides and dict overrides (pipelines/core/config.py load_settings): any text gives
  Settings or SettingsError naming the key and what to change.

An oracle written from each function's documented contract (not from its output) says which
inputs must be accepted; anything else (another exception type, an accepted invalid input, a
refused valid one, a wrong array) fails the test. Every drawn case is counted.
"""

from __future__ import annotations

import numbers
from collections import Counter
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.cli import _event_list, _id_list
from pipelines.core.config import Settings, SettingsError, load_settings, section_types
from pipelines.data.sequences import EVENT_KIND_CODES
from pipelines.serve.client import item_batch, kind_codes, pad_sessions, session_inputs

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

# ------------------------------------------------------------------------------ strategies

item_values = st.one_of(
    st.integers(0, 60), st.integers(0, 60), st.integers(0, 60),
    st.integers(INT64_MIN - 10, INT64_MAX + 10),
    st.sampled_from([INT64_MAX, INT64_MAX + 1, INT64_MIN, -1, 2**100]),
    st.integers(-5, 60).map(np.int64), st.integers(0, 60).map(np.uint8),
    st.booleans(), st.floats(allow_nan=True), st.text(max_size=4), st.none(), st.just(np.bool_(True)),
    st.just(b"3"), st.just([1]),
)
kind_values = st.one_of(
    st.sampled_from(list(EVENT_KIND_CODES)), st.integers(-2, 7), st.sampled_from(["View", "", "cart", "5"]),
    st.booleans(), st.floats(allow_nan=True), st.none(), st.integers(0, 4).map(np.int64),
)


def _containers(elements: st.SearchStrategy, min_size: int = 0, max_size: int = 6) -> st.SearchStrategy:
    """Mostly lists, sometimes tuples, ranges, sets, strings, numbers or None where a list belongs."""
    listy = st.lists(elements, min_size=min_size, max_size=max_size)
    return st.one_of(listy, listy, listy, listy.map(tuple), st.text(max_size=3), st.integers(), st.none(),
                     st.builds(range, st.integers(0, 4), st.integers(0, 8)))


good_sessions = st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=6), min_size=1, max_size=4)
sessions_strategy = st.one_of(good_sessions, good_sessions, _containers(_containers(item_values), max_size=5))
kinds_strategy = st.one_of(st.none(), st.none(), _containers(_containers(kind_values), max_size=5))
max_len_strategy = st.one_of(st.none(), st.integers(-2, 8), st.booleans(), st.floats(0, 5), st.just("3"))


# ------------------------------------------------------------------------------ oracles

def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _rows(value: Any, min_len: int) -> list[list[Any]] | None:
    """The rows of a list-of-lists argument, or None where the contract refuses its shape."""
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        return None
    rows = []
    for row in value:
        if isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
            return None
        row = list(row)
        if len(row) < min_len:
            return None
        rows.append(row)
    return rows


def _kind_code(kind: Any) -> int | None:
    if isinstance(kind, str):
        return EVENT_KIND_CODES.get(kind)
    if _is_int(kind) and 0 <= int(kind) <= len(EVENT_KIND_CODES):
        return int(kind)
    return None


def _expected_codes(kinds: Any, rows: list[list[int]]) -> list[list[int]] | None:
    if not isinstance(kinds, (list, tuple)) or len(kinds) != len(rows):
        return None
    out = []
    for krow, row in zip(kinds, rows):
        if isinstance(krow, (str, bytes)) or not hasattr(krow, "__iter__"):
            return None
        codes = [_kind_code(k) for k in krow]
        if len(codes) != len(row) or None in codes:
            return None
        out.append(codes)
    return out


def _left_padded(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        for j, v in enumerate(row):
            out[r, width - len(row) + j] = v
    return out


def _expected_pad(sessions: Any, max_len: Any, kinds: Any) -> tuple[np.ndarray, np.ndarray | None] | None:
    """What pad_sessions must return (docstring contract), or None where it must raise ValueError."""
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        return None
    rows = _rows(sessions, min_len=1)
    if rows is None or not all(_is_int(v) and INT64_MIN <= int(v) <= INT64_MAX for row in rows for v in row):
        return None
    rows = [[int(v) for v in row] for row in rows]
    codes = None
    if kinds is not None:
        codes = _expected_codes(kinds, rows)
        if codes is None:
            return None
    if max_len is not None:
        rows = [row[-max_len:] for row in rows]
        codes = None if codes is None else [row[-max_len:] for row in codes]
    width = max(len(row) for row in rows)
    return _left_padded(rows, width), None if codes is None else _left_padded(codes, width)


def _expected_matrix(value: Any) -> np.ndarray | None:
    rows = _rows(value, min_len=0)
    if rows is None or not all(_is_int(v) and 0 <= int(v) <= INT64_MAX for row in rows for v in row):
        return None
    rows = [[int(v) for v in row] for row in rows]
    return _left_padded(rows, max(1, max(len(row) for row in rows)))


def _refusal(exc: ValueError, *words: str) -> None:
    message = str(exc)
    assert message and any(w in message for w in words), f"unclear message: {message!r}"


# ------------------------------------------------------------------------------ client builders

@pytest.mark.reliability(kind="bad-input", name="Client request builders fed arbitrary Python values")
def test_client_request_builders_accept_valid_input_and_refuse_the_rest_clearly(ledger) -> None:
    tally: Counter[str] = Counter()

    @settings(FUZZ, max_examples=1200)
    @given(sessions=sessions_strategy, max_len=max_len_strategy, kinds=kinds_strategy)
    def pad(sessions: Any, max_len: Any, kinds: Any) -> None:
        tally["pad_sessions"] += 1
        expected = _expected_pad(sessions, max_len, kinds)
        try:
            got = pad_sessions(sessions, max_len, kinds)
        except ValueError as exc:
            assert expected is None, f"refused a valid call: {exc}"
            _refusal(exc, "session", "max_len", "kind")
            tally["refused"] += 1
            return
        assert expected is not None, f"accepted an invalid call: {sessions!r} {max_len!r} {kinds!r}"
        ids, codes = (got if isinstance(got, tuple) else (got, None))
        assert ids.dtype == np.int64 and np.array_equal(ids, expected[0]), (ids, expected[0])
        if expected[1] is not None:
            assert codes is not None and codes.dtype == np.int64 and np.array_equal(codes, expected[1])
        tally["accepted"] += 1

    @settings(FUZZ, max_examples=1200)
    @given(sessions=sessions_strategy, purchased=st.one_of(st.none(), sessions_strategy), kinds=kinds_strategy)
    def recommend_inputs(sessions: Any, purchased: Any, kinds: Any) -> None:
        tally["session_inputs"] += 1
        batch = _expected_matrix(sessions)
        bought = None if purchased is None else _expected_matrix(purchased)
        codes = None if kinds is None or batch is None else _expected_codes(kinds, _rows(sessions, 0))
        valid = (batch is not None and (kinds is None or codes is not None)
                 and (purchased is None or (bought is not None and len(bought) == len(batch))))
        try:
            got = session_inputs(sessions, purchased=purchased, kinds=kinds)
        except ValueError as exc:
            assert not valid, f"refused a valid call: {exc}"
            _refusal(exc, "session", "purchased", "kind")
            tally["refused"] += 1
            return
        assert valid, f"accepted an invalid call: {sessions!r} {purchased!r} {kinds!r}"
        assert np.array_equal(got["session_ids"], batch) and got["session_ids"].dtype == np.int64
        if purchased is not None:
            assert np.array_equal(got["purchased_ids"], bought)
        if kinds is not None:
            assert np.array_equal(got["event_types"], _left_padded(codes, batch.shape[1]))
        tally["accepted"] += 1

    @settings(FUZZ, max_examples=600)
    @given(items=st.one_of(st.lists(st.integers(1, 60), min_size=1, max_size=8),
                           _containers(item_values, max_size=8)))
    def items(items: Any) -> None:
        tally["item_batch"] += 1
        valid = (isinstance(items, (list, tuple)) and len(items) > 0
                 and all(_is_int(v) and 1 <= int(v) <= INT64_MAX for v in items))
        try:
            got = item_batch(items)
        except ValueError as exc:
            assert not valid, f"refused valid ids {items!r}: {exc}"
            _refusal(exc, "item")
            tally["refused"] += 1
            return
        assert valid, f"accepted invalid ids {items!r}"
        assert got.dtype == np.int64 and got.shape == (len(items), 1) and got[:, 0].tolist() == [int(v) for v in items]
        tally["accepted"] += 1

    for run in (pad, recommend_inputs, items):
        run()
    cases = tally["pad_sessions"] + tally["session_inputs"] + tally["item_batch"]
    assert cases >= 2500 and tally["accepted"] > 300 and tally["refused"] > 300, tally
    ledger.record(
        cases=cases,
        outcome=(f"{cases} arbitrary Python values into pad_sessions/kind_codes ({tally['pad_sessions']}), "
                 f"session_inputs ({tally['session_inputs']}) and item_batch ({tally['item_batch']}): "
                 f"{tally['accepted']} built exactly the contract's int64 arrays, {tally['refused']} refused with "
                 "ValueError naming the session/item and the rule, 0 other exceptions"),
        nothing_lost=True, nothing_promoted=True, **dict(tally),
    )


# ------------------------------------------------------------------------------ CLI id lists and --events

cli_text = st.one_of(
    st.text(alphabet=st.sampled_from("0123456789, -+_.x٣²\t"), max_size=30),
    st.lists(st.integers(-3, 2**70).map(str), max_size=6).map(",".join),
    st.lists(st.sampled_from([*EVENT_KIND_CODES, "0", "4", "5", "View", "²", " click "]), max_size=6).map(",".join),
    st.text(max_size=20),
)


def _cli_call(func, *args) -> tuple[Any, str | None]:
    """(result, None) or (None, the error line _fail printed) — _fail exits with code 1."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return func(*args), None
        except typer.Exit as exc:
            assert exc.exit_code == 1
            return None, err.getvalue()


@pytest.mark.reliability(kind="bad-input", name="CLI --session/--purchased id lists and --events")
def test_cli_id_lists_and_events_parse_or_name_the_option(ledger) -> None:
    tally: Counter[str] = Counter()

    @settings(FUZZ, max_examples=1500)
    @given(text=cli_text, events=cli_text)
    def one(text: str, events: str) -> None:
        tally["cases"] += 1
        words = [w.strip() for w in text.split(",") if w.strip()]
        valid = all(w.isascii() and w.isdigit() and 1 <= int(w) <= INT64_MAX for w in words)
        ids, error = _cli_call(_id_list, text, "--session")
        if error is not None:
            assert not valid, f"refused valid ids {text!r}: {error}"
            assert "--session" in error and ("item id" in error), error
            tally["refused"] += 1
            return
        assert valid and ids == [int(w) for w in words], (text, ids)
        tally["accepted"] += 1
        kinds_words = [w.strip() for w in events.split(",")]
        codes = [_kind_code(int(w) if w.isascii() and w.isdigit() else w) for w in kinds_words]
        valid_kinds = not events.strip() or (None not in codes and len(codes) == len(ids))
        kinds, error = _cli_call(_event_list, events, len(ids))
        tally["events_cases"] += 1
        if error is not None:
            assert not valid_kinds, f"refused valid --events {events!r}: {error}"
            assert "--events" in error, error
            tally["events_refused"] += 1
            return
        assert valid_kinds, f"accepted invalid --events {events!r} for {len(ids)} items"
        if kinds is not None:
            assert kind_codes(kinds, [ids]) == [codes]  # what the client will send
        tally["events_accepted"] += 1

    one()
    cases = tally.pop("cases") + tally["events_cases"]
    assert tally["accepted"] > 100 and tally["refused"] > 100 and tally["events_refused"] > 20, tally
    ledger.record(
        cases=cases,
        outcome=(f"{tally['accepted'] + tally['refused']} fuzzed --session texts ({tally['accepted']} parsed exactly, {tally['refused']} "
                 f"refused naming --session) and {tally['events_cases']} --events texts "
                 f"({tally['events_accepted']} parsed, {tally['events_refused']} refused naming --events); "
                 "exit code 1 for every refusal, 0 crashes"),
        nothing_lost=True, nothing_promoted=True, **dict(tally),
    )


# ------------------------------------------------------------------------------ --set overrides

SECTIONS = section_types()  # core's sections and the model families'
FIELDS = sorted((section, key) for section, model in SECTIONS.items() for key in model.model_fields)
DEFAULTS = Settings().model_dump(by_alias=True)
yaml_values = st.one_of(
    st.integers(-10, 10), st.integers(INT64_MIN, INT64_MAX), st.floats(allow_nan=True), st.booleans(),
    st.text(max_size=8), st.none(), st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.floats(0, 5), max_size=2),
)


@st.composite
def override_texts(draw: st.DrawFn) -> tuple[str, tuple[str, str] | None, bool]:
    """(override text, (section, key) it targets or None, whether it must be accepted)."""
    choice = draw(st.integers(0, 9))
    if choice == 0:  # arbitrary text
        return draw(st.text(max_size=30)), None, False
    section, key = draw(st.sampled_from(FIELDS))
    if choice == 1:  # the default value: must load
        return f"{section}.{key}={yaml.safe_dump(DEFAULTS[section][key], default_flow_style=True).strip()}", \
            (section, key), True
    if choice == 2:  # misspelt key or section
        typo = draw(st.sampled_from([f"{section}.{key}x", f"{section}x.{key}", f"{section}.", f".{key}",
                                     f"{section}..{key}", key]))
        return f"{typo}={draw(st.integers(0, 9))}", None, False
    if choice == 3:  # raw text as the value: YAML errors included
        return f"{section}.{key}={draw(st.text(alphabet=st.sampled_from('[]{}:,&*!|>%@`#0a1 -')))}", (section, key), \
            False
    value = draw(yaml_values)
    return f"{section}.{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}", \
        (section, key), False


@pytest.mark.reliability(kind="bad-input", name="--set overrides and params values")
def test_overrides_load_or_name_the_key_and_what_to_change(ledger) -> None:
    tally: Counter[str] = Counter()

    @settings(FUZZ, max_examples=400)
    @given(case=override_texts())
    def one(case: tuple[str, tuple[str, str] | None, bool]) -> None:
        text, target, must_load = case
        tally["cases"] += 1
        try:
            loaded = load_settings(overrides=[text])
        except SettingsError as exc:
            assert not must_load, f"{text!r} must load: {exc}"
            message = str(exc)
            if target is not None:
                dotted = f"{target[0]}.{target[1]}"
                assert dotted in message, f"{text!r}: the message does not name {dotted}: {message}"
                if "is not a YAML value" not in message and "section.key=value" not in message:
                    assert "change it in" in message or "is not a setting" in message, message
            else:
                assert "section.key=value" in message or "is not a" in message or "change it in" in message, \
                    f"{text!r}: unclear message: {message}"
            tally["refused"] += 1
            return
        assert target is not None or "=" in text, f"{text!r} loaded"
        if target is not None:
            section, key = target
            value = loaded.model_dump(by_alias=True)[section][key]
            if must_load:
                assert value == DEFAULTS[section][key]
        tally["accepted"] += 1

    one()
    # dict overrides (what a DAG run's params form sends) of the wrong shape
    for bad in ({"gpt4rec": 5}, {"gpt4rec": ["max_len", 3]}, {"nosection": {"k": 1}}, {"gpt4rec": {"max_len": -3}},
                "gpt4rec.max_len=3"):
        tally["cases"] += 1
        with pytest.raises(SettingsError) as refused:
            load_settings(overrides=bad)  # type: ignore[arg-type]
        assert any(w in str(refused.value) for w in ("gpt4rec", "nosection", "overrides")), refused.value
        tally["refused"] += 1
    assert tally["accepted"] > 60 and tally["refused"] > 200, tally
    ledger.record(
        cases=tally.pop("cases"),
        outcome=(f"{tally['accepted'] + tally['refused']} fuzzed overrides (arbitrary text, typos, YAML syntax errors, wrong types, "
                 f"out-of-range values, wrong-shaped dicts): {tally['accepted']} loaded, {tally['refused']} refused "
                 "with SettingsError naming section.key and where to change it, 0 other exceptions"),
        nothing_lost=True, nothing_promoted=True, **dict(tally),
    )
