"""The reliability ledger: every fault and bad-input test leaves one record of what it tried.

A test opts in with `@pytest.mark.reliability(kind=..., name=...)` and may add its facts through
the `ledger` fixture (`ledger.record(cases=..., outcome=..., nothing_lost=..., nothing_promoted=...)`).
At teardown the test's pass/fail is added and one JSON file is written to the folder named by
RXREC_RELIABILITY_LEDGER; `rxrec bench reliability` sets it, runs the tests and renders
reports/reliability.md from the files. Without the variable records go to pytest's temp dir, so an
ordinary `make test` leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchmarks.reliability import KIND_TITLES

LEDGER_ENV = "RXREC_RELIABILITY_LEDGER"
KINDS = tuple(KIND_TITLES)  # every kind the report has a section for


@dataclass
class Record:
    """One class of fault or bad input, tried by one test."""

    kind: str
    name: str
    test: str
    cases: int = 0
    outcome: str = ""
    nothing_lost: bool | None = None
    nothing_promoted: bool | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None
    failure: str = ""


class Ledger:
    """What a test hands its facts to; it may call `record` several times (values merge)."""

    def __init__(self, record: Record) -> None:
        self._record = record

    def record(self, *, cases: int | None = None, outcome: str | None = None, nothing_lost: bool | None = None,
               nothing_promoted: bool | None = None, **facts: Any) -> None:
        if cases is not None:
            if cases < 0:
                raise ValueError(f"cases must be >= 0, got {cases}")
            self._record.cases = int(cases)
        if outcome is not None:
            self._record.outcome = outcome
        if nothing_lost is not None:
            self._record.nothing_lost = bool(nothing_lost)
        if nothing_promoted is not None:
            self._record.nothing_promoted = bool(nothing_promoted)
        self._record.facts.update(facts)

    def add_cases(self, n: int = 1) -> None:
        self._record.cases += n


def _marker_record(item: pytest.Item) -> Record | None:
    marker = item.get_closest_marker("reliability")
    if marker is None:
        return None
    kind, name = marker.kwargs.get("kind"), marker.kwargs.get("name")
    if kind not in KINDS or not name:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.reliability needs kind= one of {KINDS} and a name=")
    return Record(kind=kind, name=name, test=item.nodeid)


def ledger_dir(config: pytest.Config) -> Path:
    configured = os.environ.get(LEDGER_ENV)
    if configured:
        return Path(configured)
    return config._tmp_path_factory.getbasetemp() / "reliability-ledger"  # type: ignore[attr-defined]


def _file_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid)[-180:] + ".json"


@pytest.fixture()
def ledger(request: pytest.FixtureRequest) -> Ledger:
    record = request.node.stash.get(_RECORD, None)
    if record is None:
        raise pytest.UsageError(f"{request.node.nodeid}: the ledger fixture needs @pytest.mark.reliability(...)")
    return Ledger(record)


_RECORD = pytest.StashKey[Record]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability(kind, name): recorded for reports/reliability.md (tests/ledger.py)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    record = _marker_record(item)
    if record is not None:
        item.stash[_RECORD] = record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    record = item.stash.get(_RECORD, None)
    if record is None:
        return report
    if report.failed:
        record.passed = False
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr).strip().splitlines()[-1]
        record.failure = record.failure or f"{report.when}: {message}"[:300]
    elif report.when == "call" and report.passed and record.passed is None:
        record.passed = True
    elif report.skipped and record.passed is None:
        record.failure = f"skipped: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}"
    if report.when == "teardown":
        folder = ledger_dir(item.config)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / _file_name(item.nodeid)).write_text(json.dumps(asdict(record), indent=2, default=str))
    return report
