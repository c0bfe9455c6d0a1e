"""The dependency audit's own logic, without pip-audit or the index: parsing, triage, the index fallback,
the verdict and the report. The real index lookup is a reliability class in tests/reliability/test_security.py."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest

from pipelines import audit
from pipelines.audit import AuditError, AuditReport, PackageResult, Vulnerability

PIP_AUDIT_JSON = {"dependencies": [
    {"name": "numpy", "version": "2.3.0", "vulns": []},
    {"name": "diskcache", "version": "5.6.3", "vulns": [
        {"id": "GHSA-w8v5-vhqr-4h9v", "fix_versions": [], "aliases": ["PYSEC-2026-2447", "CVE-2025-69872"]}]},
    {"name": "torch", "skip_reason": "Dependency not found on PyPI and could not be audited: torch (2.13.0+cpu)"},
    {"name": "rxrec", "version": "0.1.0", "skip_reason": "Dependency not found on PyPI and could not be audited"},
]}


def _vuln(vid: str, package: str = "p", aliases: tuple[str, ...] = ()) -> Vulnerability:
    return Vulnerability(vid, package, "1.0", ["1.1"], list(aliases), "pip-audit")


def _report(packages: list[PackageResult], vulns: list[Vulnerability] = ()) -> AuditReport:
    return AuditReport("2026-01-01T00:00:00+00:00", "/venv/bin/python", packages, list(vulns), 0)


# --------------------------------------------------------------------------- pip-audit's JSON


def test_pip_audit_json_gives_audited_and_skipped_packages_and_their_vulnerabilities():
    packages, vulns = audit.parse_pip_audit(PIP_AUDIT_JSON)
    assert [(p.name, p.version, p.audited_by) for p in packages] == [
        ("numpy", "2.3.0", "pip-audit"), ("diskcache", "5.6.3", "pip-audit"), ("torch", "2.13.0+cpu", ""),
        ("rxrec", "0.1.0", "")]
    assert packages[2].reason.startswith("Dependency not found on PyPI")  # the version came from the reason
    assert [(v.id, v.package, v.version, v.aliases, v.source) for v in vulns] == [
        ("GHSA-w8v5-vhqr-4h9v", "diskcache", "5.6.3", ["PYSEC-2026-2447", "CVE-2025-69872"], "pip-audit")]
    assert audit.parse_pip_audit({}) == ([], [])


# --------------------------------------------------------------------------- triage


def test_triage_file_maps_ids_to_package_and_reason(tmp_path):
    path = tmp_path / "triage.toml"
    path.write_text('[[ignore]]\nid = "GHSA-1"\npackage = "p"\nreason = "not reachable"\n')
    assert audit.load_triage(path) == {"GHSA-1": "p: not reachable"}
    assert audit.load_triage(tmp_path / "absent.toml") == {}


@pytest.mark.parametrize(("text", "message"), [
    ('[[ignore]]\nid = "GHSA-1"\npackage = "p"\nreason = "  "\n', "entry 1 lacks reason"),
    ('[[ignore]]\nid = "GHSA-1"\n', "lacks package, reason"),
    ("[[ignore]\n", "not valid TOML"),
], ids=["blank-reason", "missing-keys", "bad-toml"])
def test_a_bad_triage_file_is_refused_with_what_to_fix(tmp_path, text, message):
    path = tmp_path / "triage.toml"
    path.write_text(text)
    with pytest.raises(AuditError, match=message):
        audit.load_triage(path)


def test_the_project_triage_file_is_valid():
    assert all(reason.strip() for reason in audit.load_triage().values())


def test_triage_matches_an_id_or_any_alias_and_keeps_the_rest_untriaged():
    vulns = [_vuln("GHSA-1"), _vuln("GHSA-2", aliases=("CVE-9",)), _vuln("GHSA-3")]
    triaged = audit.apply_triage(vulns, {"GHSA-1": "p: a", "CVE-9": "p: b"})
    assert [v.triaged for v in triaged] == ["p: a", "p: b", ""]
    assert [v.triaged for v in vulns] == ["", "", ""]  # the inputs are left as they were


def test_dedupe_keeps_one_entry_per_vulnerability_and_package():
    vulns = [_vuln("GHSA-1", "Py_Yaml", ("PYSEC-1",)), _vuln("PYSEC-1", "py-yaml"), _vuln("PYSEC-1", "other")]
    assert [(v.id, v.package) for v in audit.dedupe(vulns)] == [("GHSA-1", "Py_Yaml"), ("PYSEC-1", "other")]


# --------------------------------------------------------------------------- the index fallback


def _raise(exc: Exception):
    def fetch(name: str) -> dict:
        raise exc
    return fetch


@pytest.mark.parametrize(("fetch", "reason"), [
    (_raise(urllib.error.HTTPError("u", 404, "Not Found", None, None)), "index answered HTTP 404"),
    (_raise(urllib.error.URLError("no route")), "index unreachable"),
    (lambda name: {"info": {"version": "1.0"}}, "no vulnerability data"),
    (lambda name: {"info": {"version": "2.0"}, "vulnerabilities": []}, "only for the latest release 2.0"),
], ids=["http-error", "unreachable", "no-data", "not-latest"])
def test_what_the_index_cannot_audit_stays_unaudited_with_the_reason(fetch, reason):
    result, found = audit.audit_from_index(PackageResult("p", "1.0"), fetch)
    assert not result.audited_by and reason in result.reason and found == []


def test_the_index_audits_the_latest_release_local_builds_included_and_skips_withdrawn_entries():
    data = {"info": {"version": "2.13.0"}, "vulnerabilities": [
        {"id": "GHSA-1", "fixed_in": ["2.14"], "aliases": ["CVE-1"]},
        {"id": "GHSA-2", "fixed_in": None, "aliases": None, "withdrawn": "2026-01-01"}]}
    result, found = audit.audit_from_index(PackageResult("torch", "2.13.0+cpu"), lambda name: data)
    assert result.audited_by == "pypi-project-json"
    assert [(v.id, v.fix_versions, v.aliases, v.source) for v in found] == [
        ("GHSA-1", ["2.14"], ["CVE-1"], "pypi-project-json")]


def test_run_audit_asks_the_index_only_for_skipped_packages_never_for_this_project(monkeypatch, tmp_path):
    monkeypatch.setattr(audit, "run_pip_audit", lambda python, cache_dir: (PIP_AUDIT_JSON, 1))
    asked: list[str] = []

    def fetch(name: str) -> dict:
        asked.append(name)
        return {"info": {"version": "2.13.0"}, "vulnerabilities": []}

    report = audit.run_audit(Path("/venv/bin/python"), tmp_path, {"GHSA-w8v5-vhqr-4h9v": "diskcache: accepted"},
                             fetch=fetch, workers=2)
    assert asked == ["torch"] and report.pip_audit_exit == 1
    by_name = {p.name: p for p in report.packages}
    assert list(by_name) == ["diskcache", "numpy", "rxrec", "torch"]  # sorted by canonical name
    assert by_name["torch"].audited_by == "pypi-project-json"
    assert by_name["rxrec"].reason.startswith("skipped:") and report.unaudited == []
    assert [v.triaged for v in report.vulnerabilities] == ["diskcache: accepted"]
    offline = audit.run_audit(Path("/venv/bin/python"), tmp_path, {}, use_index=False)
    assert [p.name for p in offline.unaudited] == ["torch"] and offline.untriaged


# --------------------------------------------------------------------------- verdict and report


def test_verdict_fails_only_on_an_untriaged_vulnerability():
    clean = _report([PackageResult("numpy", "2.3.0", "pip-audit")])
    assert audit.verdict(clean) == (0, "OK: 1 of 1 packages audited, 0 known vulnerabilities (0 untriaged).")
    incomplete = _report([*clean.packages, PackageResult("torch", "2.13.0", "", "index unreachable")])
    code, summary = audit.verdict(incomplete)
    assert code == 0 and summary.startswith("WARNING, INCOMPLETE AUDIT") and "1 packages could NOT be audited" in summary
    failing = _report(clean.packages, [_vuln("GHSA-1", "numpy")])
    code, summary = audit.verdict(failing)
    assert code == 1 and "numpy 1.0: GHSA-1 (fix: 1.1)" in summary and "infra/audit/triage.toml" in summary
    triaged = _report(clean.packages, audit.apply_triage([_vuln("GHSA-1", "numpy")], {"GHSA-1": "numpy: ok"}))
    assert audit.verdict(triaged)[0] == 0


def test_report_json_counts_and_markdown_sections():
    packages = [PackageResult("numpy", "2.3.0", "pip-audit"), PackageResult("six", "1.0", "pypi-project-json"),
                PackageResult("torch", "2.13.0", "", "vulnerability database unreachable, and the index reports "
                              "vulnerabilities only for the latest release 2.14 (installed 2.13.0)"),
                PackageResult("rxrec", "0.1.0", "", "skipped: this project itself")]
    report = _report(packages, [_vuln("GHSA-1", "six")])
    data = report.to_json()
    assert data["counts"] == {"packages": 4, "audited": 2, "unaudited": 1, "vulnerabilities": 1, "untriaged": 1}
    assert data["database_reachable"] is True and json.dumps(data)
    markdown = audit.render_markdown(report)
    assert "| 4 | 1 | 1 | 1 | 1 | 1 |" in markdown
    assert "| six | 1.0 | GHSA-1 |  | 1.1 | pip-audit | **untriaged** |" in markdown
    assert "- 1 packages, installed version older than the latest release" in markdown and "torch 2.13.0" in markdown
    assert "Skipped on purpose: rxrec (this project itself)" in markdown
    assert "None among the audited packages." in audit.render_markdown(_report(packages[:1]))


def test_main_writes_both_reports_and_returns_the_verdict(monkeypatch, tmp_path, capsys):
    report = _report([PackageResult("numpy", "2.3.0", "pip-audit")], [_vuln("GHSA-1", "numpy")])
    monkeypatch.setattr(audit, "run_audit", lambda *args, **kwargs: report)
    assert audit.main(["--out", str(tmp_path), "--triage", str(tmp_path / "none.toml"), "--no-index"]) == 1
    assert json.loads((tmp_path / "audit.json").read_text())["counts"]["untriaged"] == 1
    assert (tmp_path / "audit.md").read_text().startswith("# Dependency audit")
    assert "FAIL" in capsys.readouterr().err

    def broken(*args, **kwargs):
        raise AuditError("pip-audit wrote no report")

    monkeypatch.setattr(audit, "run_audit", broken)
    assert audit.main(["--out", str(tmp_path / "second")]) == 2
    assert "audit error: pip-audit wrote no report" in capsys.readouterr().err
