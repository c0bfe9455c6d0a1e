"""`rxrec bench reliability`: run every fault and bad-input test, then write reports/reliability.md.

The tests (marked `reliability`, see tests/ledger.py) each leave a record: the class of fault or bad
input, how many cases were tried, what happened, and whether anything was lost or promoted. This
command runs them with the ledger pointed at a fresh folder and renders the records together with
the soak benchmark (reports/soak.json) and the dependency audit (reports/audit.json) when those
exist, so one page says what was tried and that nothing was lost or promoted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

# The soak is not a kind: it is its own benchmark, reported beside the classes and never counted as their cases.
KIND_TITLES = {"fault": "Faults injected", "bad-input": "Bad input refused", "security": "Security checks"}


def read_ledger(folder: Path) -> list[dict[str, Any]]:
    """Every record in the ledger folder, sorted by kind then name (unreadable files are an error)."""
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"ledger record {path} is not valid JSON: {exc}") from exc
    order = list(KIND_TITLES)
    return sorted(records, key=lambda r: (order.index(r["kind"]) if r["kind"] in order else 99, r["name"], r["test"]))


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals the report leads with; `ok` only when every record passed and none lost or promoted."""
    failed = [r for r in records if r.get("passed") is not True]
    lost = [r for r in records if r.get("nothing_lost") is False]
    promoted = [r for r in records if r.get("nothing_promoted") is False]
    return {
        "classes": len(records),
        "cases": sum(int(r.get("cases") or 0) for r in records),
        "passed": len(records) - len(failed),
        "failed_or_skipped": [r["test"] for r in failed],
        "lost_something": [r["test"] for r in lost],
        "promoted_something": [r["test"] for r in promoted],
        "ok": bool(records) and not failed and not lost and not promoted,
    }


def _yes_no(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "**NO**")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def soak_age(soak: dict[str, Any], commit: str) -> str:
    """Whether the soak measured the code this report ran on: 'same code', or what it is older than."""
    measured = (soak.get("code") or {}).get("git_commit")
    if not measured:
        return f"code not recorded, older than this run's commit {commit[:12]}"
    if measured == commit and not commit.endswith("-dirty"):
        return f"same code, commit {commit[:12]}"
    return f"measured on commit {measured[:12]}, not this run's {commit[:12]}: rerun `rxrec bench soak` to match"


def _soak_section(soak: dict[str, Any] | None, commit: str) -> list[str]:
    """The soak beside the classes, never counted among their cases: it is its own 10-minute benchmark."""
    if not soak:
        return ["## Soak", "", "No soak result yet: `rxrec bench soak` writes reports/soak.json.", ""]
    s = soak.get("summary", soak)
    source = (f"Not counted in the cases above: from reports/soak.json (`rxrec bench soak`, measured "
              f"{soak.get('machine', {}).get('measured_at', '?')}; {soak_age(soak, commit)}):")
    lines = ["## Soak", "", source, ""]
    keys = [k for k in ("duration_s", "target_rate", "requests", "errors", "error_rate", "p50_ms", "p95_ms", "p99_ms",
                        "rss_start_mb", "rss_end_mb", "rss_growth_mb_per_min", "memory_growth", "passed") if k in s]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys), "| " + " | ".join(str(s[k]) for k in keys) + " |",
              ""]
    return lines


def _audit_section(audit: dict[str, Any] | None) -> list[str]:
    if not audit:
        return ["## Dependency audit", "", "No audit yet: `make audit` writes reports/audit.json.", ""]
    counts = audit.get("counts", {})
    lines = ["## Dependency audit", "",
             f"From reports/audit.json (`make audit`, {audit.get('created', '?')}): "
             + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".", ""]
    findings = audit.get("vulnerabilities", [])
    if findings:
        lines += ["| package | version | advisory | fixed in | triage |", "|---|---|---|---|---|"]
        lines += [f"| {v['package']} | {v['version']} | {v['id']} | {', '.join(v.get('fix_versions') or []) or '—'} | "
                  f"{_cell(v.get('triaged') or '**untriaged**')} |" for v in findings]
        lines.append("")
    return lines + ["Triage of the findings: infra/audit/triage.toml and README.md, section *Dependency audit*.", ""]


def markdown(records: list[dict[str, Any]], summary: dict[str, Any], soak: dict[str, Any] | None,
             audit: dict[str, Any] | None, command: str, commit: str = "unknown") -> str:
    verdict = "every class passed; nothing lost, nothing promoted" if summary["ok"] else "NOT OK: see the failures below"
    lines = ["# Reliability report", "",
             (f"Generated by {command}. {summary['classes']} fault and bad-input classes, "
              f"{summary['cases']:,} cases in all: {verdict}."), ""]
    for kind, title in KIND_TITLES.items():
        rows = [r for r in records if r["kind"] == kind]
        if not rows:
            continue
        lines += [f"## {title}", "", "| class | cases | what happened | nothing lost | nothing promoted | result |",
                  "|---|---:|---|---|---|---|"]
        for r in rows:
            result = "pass" if r.get("passed") else f"**FAIL** {_cell(r.get('failure', ''))}"
            lines.append(f"| {_cell(r['name'])} | {int(r.get('cases') or 0):,} | {_cell(r.get('outcome') or '')} | "
                         f"{_yes_no(r.get('nothing_lost'))} | {_yes_no(r.get('nothing_promoted'))} | {result} |")
        lines.append("")
    lines += _soak_section(soak, commit) + _audit_section(audit)
    lines += ["## Tests behind each row", ""] + [f"- {r['name']}: `{r['test']}`" for r in records] + [""]
    return "\n".join(lines)


def _ledger_time(ledger: Path) -> str:
    """When the newest ledger record was written (UTC), for a report rendered without running the tests."""
    from datetime import UTC, datetime

    newest = max((p.stat().st_mtime for p in ledger.glob("*.json")), default=None)
    return "no records" if newest is None else datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _optional_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_reliability_tests(ledger: Path, pytest_args: list[str], timeout_s: float) -> int:
    """pytest -m reliability with the ledger pointed at `ledger` (emptied first); returns pytest's exit code."""
    from pipelines.core.config import PROJECT_ROOT

    shutil.rmtree(ledger, ignore_errors=True)
    ledger.mkdir(parents=True)
    env = {**os.environ, "RXREC_RELIABILITY_LEDGER": str(ledger),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "pytest", "-m", "reliability", "-p", "no:cacheprovider", "-q", *pytest_args]
    typer.echo("▶ " + " ".join(cmd))
    try:
        return subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, timeout=timeout_s, check=False).returncode
    except subprocess.TimeoutExpired:
        typer.secho(f"error: the reliability tests ran past {timeout_s:.0f} s and were stopped", fg=typer.colors.RED,
                    err=True)
        return 124


def register(bench: typer.Typer) -> None:
    @bench.command("reliability")
    def reliability(
        run: Annotated[bool, typer.Option(help="run the tests first (--no-run: render the existing ledger)")] = True,
        pytest_args: Annotated[str, typer.Option(help="extra pytest arguments, e.g. '-m \"reliability and not slow\"'"
                                                 " is not needed: pass paths or -k")] = "",
        timeout: Annotated[float, typer.Option(help="seconds the test run may take")] = 3600.0,
        out_dir: Annotated[str, typer.Option(help="where reliability.json/.md go (default: reports/)")] = "",
    ) -> None:
        """Fault-injection and bad-input tests → reports/reliability.md (what was tried, what happened)."""
        from benchmarks.common import REPORTS, write_report
        from pipelines.core.config import PROJECT_ROOT
        from pipelines.track import lineage

        ledger = PROJECT_ROOT / "var" / "reliability" / "ledger"
        code = run_reliability_tests(ledger, pytest_args.split(), timeout) if run else 0
        if not ledger.is_dir():
            typer.secho(f"error: no ledger at {ledger}: run without --no-run first", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
        records = read_ledger(ledger)
        summary = summarise(records) | {"pytest_exit_code": code if run else None}
        out = Path(out_dir) if out_dir else REPORTS
        soak, audit = _optional_json(REPORTS / "soak.json"), _optional_json(REPORTS / "audit.json")
        command = ("`rxrec bench reliability`" if run else
                   f"`rxrec bench reliability --no-run` from the ledger of the test run of {_ledger_time(ledger)}")
        path = write_report("reliability", {"summary": summary, "records": records},
                            markdown(records, summary, soak, audit, command, lineage.git_commit(PROJECT_ROOT)), out)
        typer.echo(f"{summary['classes']} classes, {summary['cases']:,} cases, ok={summary['ok']}: {path} and "
                   f"{path.with_suffix('.md')}")
        if code != 0 or not summary["ok"]:
            raise typer.Exit(1)
