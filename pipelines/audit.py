"""Dependency audit: which installed packages have known vulnerabilities, and which could not be checked.

`make audit` (run by `make test`, so by CI) calls `python -m pipelines.audit`. It runs pip-audit over the
project venv; for every package pip-audit could not audit (where the vulnerability database is unreachable,
pip-audit reports each as "not found on PyPI" and still prints "No known vulnerabilities found"), it asks
the package index's project JSON, whose `vulnerabilities` field is the OSV data for the *latest* release:
that audits a package whose installed version is the latest, and nothing else. Whatever stays unaudited is
listed with the reason, loudly, never silently counted as clean.

Verdict: exit 1 on a known vulnerability that is not triaged in infra/audit/triage.toml (id, package,
reason); exit 0 otherwise, also when the database was unreachable (the report says so and how to run the
audit where it is reachable). Writes reports/audit.json and reports/audit.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from pipelines.core.config import PROJECT_ROOT
from pipelines.track.lineage import provenance, provenance_line

TRIAGE_FILE = PROJECT_ROOT / "infra" / "audit" / "triage.toml"
INDEX_URL = "https://pypi.org/pypi/{name}/json"
OWN_PACKAGE = "rxrec"


class AuditError(RuntimeError):
    """The audit itself could not run (pip-audit missing or crashed, a malformed triage file)."""


@dataclass
class Vulnerability:
    id: str
    package: str
    version: str
    fix_versions: list[str]
    aliases: list[str] = field(default_factory=list)
    source: str = ""  # pip-audit, or pypi-project-json
    triaged: str = ""  # the triage reason when infra/audit/triage.toml ignores it


@dataclass
class PackageResult:
    name: str
    version: str
    audited_by: str = ""  # pip-audit | pypi-project-json | "" (not audited)
    reason: str = ""  # why it was not audited


@dataclass
class AuditReport:
    created: str
    python: str
    packages: list[PackageResult]
    vulnerabilities: list[Vulnerability]
    pip_audit_exit: int | None

    @property
    def audited(self) -> list[PackageResult]:
        return [p for p in self.packages if p.audited_by]

    @property
    def unaudited(self) -> list[PackageResult]:
        return [p for p in self.packages if not p.audited_by and not p.reason.startswith("skipped:")]

    @property
    def untriaged(self) -> list[Vulnerability]:
        return [v for v in self.vulnerabilities if not v.triaged]

    def to_json(self) -> dict:
        return {"created": self.created, "python": self.python, "pip_audit_exit": self.pip_audit_exit,
                "counts": {"packages": len(self.packages), "audited": len(self.audited),
                           "unaudited": len(self.unaudited), "vulnerabilities": len(self.vulnerabilities),
                           "untriaged": len(self.untriaged)},
                "database_reachable": self.database_reachable,
                "vulnerabilities": [asdict(v) for v in self.vulnerabilities],
                "packages": [asdict(p) for p in self.packages]}

    @property
    def database_reachable(self) -> bool:
        """Whether pip-audit itself reached its database for at least one package."""
        return any(p.audited_by == "pip-audit" for p in self.packages)


# --------------------------------------------------------------------------- triage


def load_triage(path: Path = TRIAGE_FILE) -> dict[str, str]:
    """Vulnerability id -> reason; every entry needs id, package and a non-empty reason."""
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise AuditError(f"{path}: not valid TOML ({exc}); fix the file") from exc
    out: dict[str, str] = {}
    for number, entry in enumerate(data.get("ignore", []), start=1):
        missing = [k for k in ("id", "package", "reason") if not str(entry.get(k, "")).strip()]
        if missing:
            raise AuditError(f"{path}: [[ignore]] entry {number} lacks {', '.join(missing)}: "
                             "each ignored vulnerability needs its id, the package and why it is accepted")
        out[entry["id"]] = f"{entry['package']}: {entry['reason']}"
    return out


def apply_triage(vulns: Iterable[Vulnerability], triage: dict[str, str]) -> list[Vulnerability]:
    """Mark the vulnerabilities the triage file ignores (by id or by any alias)."""
    out = []
    for v in vulns:
        reason = next((triage[i] for i in (v.id, *v.aliases) if i in triage), "")
        out.append(Vulnerability(**{**asdict(v), "triaged": reason}))
    return out


# --------------------------------------------------------------------------- sources


def run_pip_audit(python: Path, cache_dir: Path, timeout_s: float = 900) -> tuple[dict, int]:
    """pip-audit over the environment of `python`, JSON output; (parsed output, exit code)."""
    out = cache_dir / "pip-audit.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), "-m", "pip_audit", "--local", "--format", "json", "--progress-spinner", "off",
           "--cache-dir", str(cache_dir / "http"), "--output", str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise AuditError(f"cannot run {python}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise AuditError(f"pip-audit did not finish within {timeout_s:.0f}s") from exc
    if not out.exists():
        raise AuditError(f"pip-audit wrote no report (exit {done.returncode}): {done.stderr.strip()[-800:]}"
                         "\n(install it: .venv/bin/pip install pip-audit)")
    return json.loads(out.read_text()), done.returncode


def parse_pip_audit(data: dict) -> tuple[list[PackageResult], list[Vulnerability]]:
    """pip-audit's JSON -> per-package results and the vulnerabilities it found."""
    packages, vulns = [], []
    for dep in data.get("dependencies", []):
        name, version, skip = dep["name"], dep.get("version", ""), dep.get("skip_reason", "")
        if skip:
            if not version and skip.endswith(")") and "(" in skip:  # "...: name (1.2.3)"
                version = skip.rsplit("(", 1)[1].rstrip(")")
            packages.append(PackageResult(name, version, "", skip))
            continue
        packages.append(PackageResult(name, version, "pip-audit"))
        for v in dep.get("vulns", []):
            vulns.append(Vulnerability(v["id"], name, version, list(v.get("fix_versions", [])),
                                       list(v.get("aliases", [])), "pip-audit"))
    return packages, vulns


def fetch_project_json(name: str, timeout_s: float = 20) -> dict:
    with urllib.request.urlopen(INDEX_URL.format(name=canonicalize_name(name)), timeout=timeout_s) as response:
        return json.loads(response.read())


def _same_version(a: str, b: str) -> bool:
    """Same release; a local build tag (torch 2.13.0+cpu) is the same release for vulnerability purposes."""
    try:
        return Version(a).public == Version(b).public
    except InvalidVersion:
        return a == b


def audit_from_index(package: PackageResult, fetch: Callable[[str], dict]) -> tuple[PackageResult, list[Vulnerability]]:
    """Audit one package that pip-audit skipped through the index's project JSON (latest release only)."""
    try:
        data = fetch(package.name)
    except urllib.error.HTTPError as exc:
        return PackageResult(package.name, package.version, "", f"index answered HTTP {exc.code} for the project"), []
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return PackageResult(package.name, package.version, "", f"index unreachable: {exc}"), []
    latest = data.get("info", {}).get("version", "")
    if "vulnerabilities" not in data:
        return PackageResult(package.name, package.version, "", "the index's project JSON has no vulnerability data"), []
    if not _same_version(package.version, latest):
        return PackageResult(package.name, package.version, "",
                             f"vulnerability database unreachable, and the index reports vulnerabilities only "
                             f"for the latest release {latest} (installed {package.version})"), []
    vulns = [Vulnerability(v["id"], package.name, package.version, list(v.get("fixed_in") or []),
                           list(v.get("aliases") or []), "pypi-project-json")
             for v in data["vulnerabilities"] if not v.get("withdrawn")]
    return PackageResult(package.name, package.version, "pypi-project-json"), vulns


def dedupe(vulns: Iterable[Vulnerability]) -> list[Vulnerability]:
    """One entry per vulnerability per package: the index lists a GHSA and its PYSEC alias separately."""
    out: list[Vulnerability] = []
    seen: dict[str, set[str]] = {}
    for v in vulns:
        names = {v.id, *v.aliases}
        known = seen.setdefault(canonicalize_name(v.package), set())
        if names & known:
            continue
        known |= names
        out.append(v)
    return out


def run_audit(python: Path, cache_dir: Path, triage: dict[str, str], *, use_index: bool = True,
              fetch: Callable[[str], dict] = fetch_project_json, workers: int = 8) -> AuditReport:
    """pip-audit first; the index's project JSON for what it skipped; triage applied."""
    data, code = run_pip_audit(python, cache_dir)
    packages, vulns = parse_pip_audit(data)
    todo = [p for p in packages if not p.audited_by and canonicalize_name(p.name) != OWN_PACKAGE]
    done = {canonicalize_name(p.name): p for p in packages}
    if use_index and todo:
        with ThreadPoolExecutor(workers) as pool:
            for result, found in pool.map(lambda p: audit_from_index(p, fetch), todo):
                done[canonicalize_name(result.name)] = result
                vulns.extend(found)
    if OWN_PACKAGE in done:  # our own package (editable install): not on the index, nothing to audit
        done[OWN_PACKAGE].reason = "skipped: this project itself (editable install, not on the index)"
    return AuditReport(created=datetime.now(UTC).isoformat(timespec="seconds"), python=str(python),
                       packages=sorted(done.values(), key=lambda p: canonicalize_name(p.name)),
                       vulnerabilities=apply_triage(dedupe(vulns), triage), pip_audit_exit=code)


# --------------------------------------------------------------------------- verdict and report


def verdict(report: AuditReport) -> tuple[int, str]:
    """Exit code and one-paragraph summary: 1 only on an untriaged known vulnerability."""
    counts = (f"{len(report.audited)} of {len(report.packages)} packages audited, "
              f"{len(report.vulnerabilities)} known vulnerabilities ({len(report.untriaged)} untriaged)")
    if report.untriaged:
        ids = ", ".join(f"{v.package} {v.version}: {v.id} (fix: {', '.join(v.fix_versions) or 'none yet'})"
                        for v in report.untriaged)
        return 1, (f"FAIL: {counts}. Untriaged: {ids}. Upgrade the package, or add an [[ignore]] entry with "
                   f"id, package and reason to {TRIAGE_FILE.relative_to(PROJECT_ROOT)}.")
    if report.unaudited:
        return 0, (f"WARNING, INCOMPLETE AUDIT: {counts}; {len(report.unaudited)} packages could NOT be audited "
                   "(vulnerability database unreachable from here: pip-audit's per-version lookups fail). "
                   "This is not a clean bill: run `make audit` where https://pypi.org/pypi/<name>/<version>/json "
                   "or https://api.osv.dev is reachable.")
    return 0, f"OK: {counts}."


def render_markdown(report: AuditReport) -> str:
    _code, summary = verdict(report)
    lines = ["# Dependency audit", "",
             f"Generated by `make audit` (`python -m pipelines.audit`) on {report.created} for `{report.python}`.",
             "", f"**{summary}**", "",
             ("| packages | audited by pip-audit | audited by the index's project JSON | not audited | vulnerabilities "
             "| untriaged |"), "|---|---|---|---|---|---|",
             (f"| {len(report.packages)} | {sum(p.audited_by == 'pip-audit' for p in report.packages)} "
             f"| {sum(p.audited_by == 'pypi-project-json' for p in report.packages)} | {len(report.unaudited)} "
             f"| {len(report.vulnerabilities)} | {len(report.untriaged)} |"), "", "## Vulnerabilities found", ""]
    if report.vulnerabilities:
        lines += ["| package | version | id | aliases | fix versions | source | triage |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {v.package} | {v.version} | {v.id} | {', '.join(v.aliases)} | {', '.join(v.fix_versions)} "
                  f"| {v.source} | {v.triaged or '**untriaged**'} |" for v in report.vulnerabilities]
    else:
        lines.append("None among the audited packages.")
    lines += ["", "## Packages that could not be audited", ""]
    if report.unaudited:
        reasons: dict[str, list[str]] = {}
        for p in report.unaudited:
            key = ("installed version older than the latest release (the index reports vulnerabilities only for "
                   "the latest; the per-version database is unreachable)") if "only for the latest release" in p.reason \
                else p.reason
            reasons.setdefault(key, []).append(f"{p.name} {p.version}")
        for reason, names in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"- {len(names)} packages, {reason}: {', '.join(names)}")
        lines += ["", "Run `make audit` where the vulnerability database is reachable for a complete audit."]
    else:
        lines.append("None.")
    skipped = [p for p in report.packages if p.reason.startswith("skipped:")]
    if skipped:
        lines += ["", "Skipped on purpose: " + ", ".join(f"{p.name} ({p.reason.removeprefix('skipped: ')})"
                                                        for p in skipped)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", type=Path, default=Path(sys.executable),
                        help="the interpreter whose environment is audited (default: this one)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports", help="folder for audit.json/.md")
    parser.add_argument("--triage", type=Path, default=TRIAGE_FILE)
    parser.add_argument("--cache-dir", type=Path, default=PROJECT_ROOT / "var" / "audit")
    parser.add_argument("--no-index", action="store_true", help="do not ask the index for what pip-audit skipped")
    args = parser.parse_args(argv)
    try:
        report = run_audit(args.python, args.cache_dir, load_triage(args.triage), use_index=not args.no_index)
    except AuditError as exc:
        print(f"audit error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    code = provenance(PROJECT_ROOT, "make audit")
    (args.out / "audit.json").write_text(json.dumps({**report.to_json(), "code": code}, indent=2) + "\n")
    (args.out / "audit.md").write_text(render_markdown(report) + "\n" + provenance_line(code) + "\n")
    code, summary = verdict(report)
    print(("\n" + "!" * 78 + "\n" if code or report.unaudited else "") + summary, file=sys.stderr if code else sys.stdout)
    print(f"report: {args.out / 'audit.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
