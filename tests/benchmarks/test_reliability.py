"""The reliability ledger (tests/ledger.py) and the report built from it (benchmarks/reliability.py)."""

from __future__ import annotations

import pytest

from benchmarks.reliability import markdown, read_ledger, summarise

pytest_plugins = ["pytester"]

INNER = '''
import pytest

@pytest.mark.reliability(kind="fault", name="disk full during export")
def test_recorded(ledger):
    ledger.record(cases=3, outcome="refused with a clear error", nothing_lost=True, nothing_promoted=True, port=1)
    ledger.add_cases(2)

@pytest.mark.reliability(kind="bad-input", name="fuzzed ids")
def test_fails_before_recording(ledger):
    assert 1 == 2, "the parser crashed"

def test_unmarked():
    pass
'''


def test_each_marked_test_leaves_one_record_with_its_result(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("RXREC_RELIABILITY_LEDGER", str(tmp_path / "ledger"))
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("-p", "tests.ledger", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    records = {r["name"]: r for r in read_ledger(tmp_path / "ledger")}
    assert set(records) == {"disk full during export", "fuzzed ids"}
    ok = records["disk full during export"]
    assert (ok["passed"], ok["cases"], ok["nothing_lost"], ok["facts"]) == (True, 5, True, {"port": 1})
    bad = records["fuzzed ids"]
    assert bad["passed"] is False and "the parser crashed" in bad["failure"]


def test_a_marker_without_kind_is_a_usage_error(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("RXREC_RELIABILITY_LEDGER", str(tmp_path / "ledger"))
    pytester.makepyfile(test_inner='import pytest\n@pytest.mark.reliability(name="x")\ndef test_x():\n    pass\n')
    result = pytester.runpytest("-p", "tests.ledger", "-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*needs kind=*"])


def _record(name: str, **kw) -> dict:
    return {"kind": "fault", "name": name, "test": f"tests/x.py::{name}", "cases": 1, "outcome": "ok",
            "nothing_lost": True, "nothing_promoted": True, "facts": {}, "passed": True, "failure": ""} | kw


def test_summary_is_ok_only_when_all_passed_and_nothing_lost_or_promoted():
    assert summarise([_record("a"), _record("b", cases=4)])["ok"] and summarise([_record("a")])["cases"] == 1
    assert not summarise([])["ok"]
    assert not summarise([_record("a", passed=False)])["ok"]
    assert summarise([_record("a", nothing_lost=False)])["lost_something"] == ["tests/x.py::a"]
    assert not summarise([_record("a", nothing_promoted=False)])["ok"]


def test_markdown_lists_every_class_with_its_counts_and_escapes_cells():
    records = [_record("Triton killed | under load", cases=1200, outcome="clients got UNAVAILABLE"),
               _record("fuzzed ids", kind="bad-input", cases=5000, passed=False, failure="boom")]
    audit = {"created": "2026-12-01", "counts": {"packages": 3, "vulnerabilities": 2},
             "vulnerabilities": [{"package": "diskcache", "version": "5.6.3", "id": "GHSA-1", "fix_versions": [],
                                  "triaged": "local | cache only"},
                                 {"package": "foo", "version": "1.0", "id": "GHSA-2", "fix_versions": ["1.1"]}],
             "packages": [{"name": "not-in-the-report"}]}
    text = markdown(records, summarise(records), None, audit, "`rxrec bench reliability`")
    assert "## Faults injected" in text and "## Bad input refused" in text
    assert "Triton killed \\| under load | 1,200 |" in text
    assert "**FAIL** boom" in text and "NOT OK" in text and "6,200 cases" in text
    assert "rxrec bench soak" in text and "packages 3, vulnerabilities 2" in text
    assert "| diskcache | 5.6.3 | GHSA-1 | — | local \\| cache only |" in text
    assert "| foo | 1.0 | GHSA-2 | 1.1 | **untriaged** |" in text and "not-in-the-report" not in text


def test_an_unreadable_record_names_its_file(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        read_ledger(tmp_path)


def test_the_soak_is_reported_beside_the_classes_with_the_code_it_measured():
    from benchmarks.reliability import soak_age

    soak = {"summary": {"requests": 670_020, "errors": 0, "passed": True}, "machine": {"measured_at": "then"},
            "code": {"git_commit": "a" * 40}}
    assert soak_age(soak, "a" * 40) == "same code, commit aaaaaaaaaaaa"
    assert "rerun `rxrec bench soak`" in soak_age(soak, "b" * 40)
    assert "rerun" in soak_age(soak, "a" * 40 + "-dirty")  # uncommitted changes are not the same code
    assert soak_age({"summary": {}}, "b" * 40).startswith("code not recorded")
    records = [_record("one", cases=3)]
    text = markdown(records, summarise(records), soak, None, "`rxrec bench reliability`", "b" * 40)
    assert "1 fault and bad-input classes, 3 cases in all" in text  # the soak's requests are not cases
    assert "Not counted in the cases above" in text and "670020" in text
