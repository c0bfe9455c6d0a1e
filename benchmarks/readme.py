"""The figures the README quotes, rendered from the reports so the two cannot drift apart.

The README holds each quoted passage between `<!-- figures: NAME -->` and `<!-- /figures -->`;
`rxrec bench readme` rewrites those passages from reports/*.json, and a test fails while any passage
differs from what the reports say now. A passage names the commit its figures were measured on, so a
reader sees when a report is older than the code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.serve_recommend import scoring_text
from pipelines.core.config import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
BLOCK = re.compile(r"(<!-- figures: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /figures -->)", re.DOTALL)


class ReadmeFiguresError(ValueError):
    """A figures passage the README asks for cannot be rendered (unknown name, report missing)."""


def _commit(report: dict[str, Any]) -> str:
    commit = (report.get("code") or {}).get("git_commit")
    return f"commit {commit[:12]}" if commit else "commit not recorded"


def _measured(report: dict[str, Any]) -> str:
    return f"{_commit(report)}, {str(report.get('machine', {}).get('measured_at', '?'))[:10]}"


def _caveat(report: dict[str, Any]) -> str:
    """A report older than commit recording says so, in its own words, wherever it is quoted."""
    code = report.get("code") or {}
    return "" if code.get("git_commit") else f" ({(code.get('note') or 'older than commit recording').rstrip('.')})"


def _top_open_level(result: dict[str, Any]) -> dict[str, Any]:
    """The highest open-loop load the benchmark offered at one length (the level its target is judged at)."""
    return max((lv for lv in result["levels"] if lv["mode"] == "open"), key=lambda lv: lv["target_rps"])


def serve(reports: Path) -> str:
    report = _read(reports, "serve")
    if isinstance(report["results"], dict):  # one catalogue, one window per level (reports before repeats)
        return _serve_one_catalogue(report)
    lines = [(f"Last run ([reports/serve.md](reports/serve.md), {_measured(report)}; {report['server']['triton']}; "
              f"server and load generator on the same {report['machine']['cpu_count']} cores; each level "
              f"{report['load_generator']['repeats']} times, {report['load_generator']['duration_s']:g} s each, the "
              f"worst counts):"), "",
             ("| catalogue | items | entry | length | requests/min (worst) | p99 ms (worst; spread) | errors | target "
             "| ORT floor p99 ms | model |"), "|---|---:|---|---:|---:|---|---:|---|---:|---|"]
    for r in report["results"]:
        _rate, worst = max(r["worst"].items(), key=lambda kv: float(kv[0]))
        target = r["target"]
        verdict = "-" if r["passed"] is None else ("pass" if r["passed"] else "FAIL")
        floor = "-" if r["ort_floor"] is None else f"{r['ort_floor']['batch1_p99_ms']:.2f}"
        lines.append(f"| {r['catalogue']} | {r['n_items']:,} | {r.get('entry', 'gpt4rec')} | {r['length']} "
                     f"| {worst['requests_per_min']:,.0f} "
                     f"| {worst['p99_ms']:.1f} ({worst['p99_ms_spread'][0]:.1f}–{worst['p99_ms_spread'][1]:.1f}) "
                     f"| {worst['errors']} | p99 <= {target['p99_ms']:g} ms at {target['requests_per_min']:,.0f}/min: "
                     f"{verdict} | {floor} | {r['source']} |")
    lines += ["", f"Overall {'PASS' if report['passed'] else 'FAIL'}{_caveat(report)}."]
    return "\n".join(lines) + "\n"


def _serve_one_catalogue(report: dict[str, Any]) -> str:
    parts, targets = [], []
    for length, result in sorted(report["results"].items(), key=lambda kv: int(kv[0])):
        level, target = _top_open_level(result), result["target"]
        parts.append(f"length {length} at {level['requests_per_min']:,.0f} requests/min with p99 {level['p99_ms']:.1f} "
                     f"ms and {level['errors']} errors (in-process ONNX Runtime floor, batch 1: p99 "
                     f"{result['ort_floor']['batch1_p99_ms']:.2f} ms)")
        targets.append(f"p99 <= {target['p99_ms']:g} ms at {target['requests_per_min']:,}/min")
    first = next(iter(report["results"].values()))
    duration = first["levels"][0]["duration_s"]
    return (f"Last run ([reports/serve.md](reports/serve.md), {_measured(report)}; {first['source']}; the raw "
            f"`gpt4rec` model, one {duration:g} s window per level, server and load generator on the same "
            f"{report['machine']['cpu_count']} cores): {'; '.join(parts)}. Targets: {' and '.join(targets)}; "
            f"overall {'PASS' if report['passed'] else 'FAIL'}{_caveat(report)}.\n")


def reliability(reports: Path) -> str:
    report = _read(reports, "reliability")
    s = report["summary"]
    verdict = "all passed, nothing lost, nothing promoted" if s["ok"] else "NOT all passed (see the report)"
    text = (f"Last run ([reports/reliability.md](reports/reliability.md), {_measured(report)}): {s['classes']} "
            f"classes, {s['cases']:,} cases, {verdict}{_caveat(report)}.")
    soak_path = reports / "soak.json"
    if soak_path.is_file():
        soak = json.loads(soak_path.read_text())
        k = soak["summary"]
        memory = "grew" if k["memory_growth"] else "flat"
        rate = (f"{k['capacity_fraction']:.0%} of {k['capacity_rps']:,.0f} probed" if k.get("capacity_rps")
                else "the rate asked for")
        served = f" of the {soak['model']['catalogue']} model" if soak["model"].get("catalogue") else ""
        text += (f" Beside it, the 10-minute soak{served} ([reports/soak.md](reports/soak.md), {_measured(soak)}) at "
                 f"{k['target_rate']:,.0f} req/s ({rate}, length {k['seq_len']}) "
                 f"answered {k['requests']:,} requests with {k['errors']} errors, p99 {k['p99_ms']:.1f} ms over the "
                 f"whole run, server memory {memory} at {k['rss_end_mb']} MB; "
                 f"{'PASS' if k['passed'] else 'FAIL'}{_caveat(soak)}.")
    return text + "\n"


def placements(reports: Path) -> str:
    report = _read(reports, "placements")
    lines = [(f"Last run ([reports/placements.md](reports/placements.md), {_measured(report)}; {report['users']:,} "
             f"test users of the generated world per placement, top-{report['k']} lists through the safety policy, "
             "lifts over the static popularity list of the same placement):"), "",
             "| placement | family | CTR | add-to-cart | purchase | coverage |", "|---|---|---|---|---|---|"]
    for placement, rows in report["placements"].items():
        lines += [f"| {placement} | {family} | {m['ctr_vs_static']:+.0%} | {m['add_to_cart_vs_static']:+.0%} | "
                  f"{m['purchase_vs_static']:+.0%} | {m['coverage']:.0%} |"
                  for family, m in rows.items() if family != "popularity"]
    return "\n".join(lines) + "\n"


def serve_recommend(reports: Path) -> str:
    report = _read(reports, "serve-recommend", "serve --entry recommend")
    worst = report["worst_added_p50_ms"]
    plain = max(lv["p50_ms"] for lv in report["variants"]["plain (no policy, personal only)"])
    added = ", ".join(f"{placement} {ms:+.2f} ms" for placement, ms in worst.items())
    return (f"Last run ([reports/serve-recommend.md](reports/serve-recommend.md), {_measured(report)}; "
            f"{report['n_items']:,} products, sessions of {report['length']}, open loop at {report['rate_per_s']:g} "
            f"requests/s through Triton, recommend {scoring_text(report)}, "
            f"worst of {report['rounds']} rounds): the entry point without the pharmacy "
            f"layer answers at p50 {plain:.1f} ms; the policy and each placement add {added} "
            f"(target <= {report['target_added_p50_ms']:g} ms: {'PASS' if report['passed'] else 'FAIL'}).\n")


def _score(m: dict[str, Any], key: str) -> str:
    spread = m.get("spread", {})
    return f"{m[key]:.4f} ± {spread[key]:.4f}" if key in spread else f"{m[key]:.4f}"


def _row_stamp(report: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """A leaderboard row's provenance in a report's shape: its own (kept by `bench quality --add`) or the report's."""
    stamp = row.get("measured")
    return {"code": stamp["code"], "machine": {"measured_at": stamp["measured_at"]}} if stamp else report


def quality(reports: Path) -> str:
    """Each quality leaderboard that exists: its families' HR@10 / NDCG@10 (mean ± sd over seeds) and train time."""
    lines = []
    for path in sorted(reports.glob("quality-*.json")):
        report = json.loads(path.read_text())
        seeds = report.get("seeds") or [report.get("seed")]
        recipe = report.get("recipe")
        lines += [(f"[reports/{path.stem}.md](reports/{path.stem}.md) ({_measured(report)}; {report['dataset']}, "
                   f"{report['protocol']['users']:,} test users, all-item ranking; {len(seeds)} "
                   f"seed{'s' if len(seeds) > 1 else ''}; {f'recipe `{recipe}`' if recipe else 'no recipe'}"
                   f"{_caveat(report)}):"), "",
                  "| model | HR@10 | NDCG@10 | train s |", "|---|---|---|---|"]
        mixed = any("measured" in m for m in report["models"].values())
        if mixed:  # rows kept by `bench quality --add` say where each was measured
            lines[-2:] = ["| model | HR@10 | NDCG@10 | train s | measured at |", "|---|---|---|---|---|"]
        lines += [f"| {family} | {_score(m, 'hr_at_10')} | {_score(m, 'ndcg_at_10')} | {m['train_seconds']:.0f} |"
                  + (f" {_measured(_row_stamp(report, m))} |" if mixed else "")
                  for family, m in report["models"].items()]
        lines.append("")
    if not lines:
        raise ReadmeFiguresError(f"the README quotes the quality leaderboards, but {reports} has no quality-*.json: "
                                 "run `rxrec bench quality`")
    return "\n".join(lines)


def scale(reports: Path) -> str:
    """The chain's wall time and peak memory per world size, the target's verdict and the slowest stages."""
    from benchmarks.scale import TARGET_MIN_EVENTS

    report = _read(reports, "scale")
    lines = [(f"Last run ([reports/scale.md](reports/scale.md), {_measured(report)}; every stage as `rxrec stage`, "
              f"{len(report['chain'])} stages, {report['chain'][0]} to {report['chain'][-1]}):"), "",
             "| products | users | events | chain wall s | peak GB | slowest stages (s) |", "|---:|---:|---:|---:|---:|---|"]
    for size in report["sizes"]:
        slowest = sorted(size["stages"], key=lambda st: -st["wall_s"])[:3]
        names = ", ".join(f"{st['stage']} {st['wall_s']:,.0f}" + ("" if st["status"] == "ok" else f" ({st['status']})")
                          for st in slowest)
        kept = f" (kept from {_measured(_row_stamp(report, size))})" if "measured" in size else ""
        lines.append(f"| {size['products']:,} | {size['users']:,} | {size['events'] or 0:,} | {size['wall_s']:,.0f} "
                     f"| {size['peak_rss_gb']:.2f} | {names}{kept} |")
    v = report["verdict"]
    worse = [stage for stage, g in report["growth"].items() if g["worse_than_nlogn"]]
    judged = (v.get("events") or 0) >= TARGET_MIN_EVENTS
    result = ("met" if v["met"] else "not met") if judged else \
        f"not judged yet (it is set for the ~100x world; the largest measured has {v.get('events') or 0:,} events)"
    lines += ["", (f"Target on the largest world measured ({v['world']}): the chain in <= {report['chain_limit_s']:,.0f} s "
                   f"with <= {report['memory_limit_gb']:g} GB: {result}"
                   + (f", stopped at {v['stopped_at']['stage']} ({v['stopped_at']['status']})" if v["stopped_at"] else "")
                   + f". Stages growing worse than n log n: {', '.join(worse) if worse else 'none'}.")]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[Path], str]] = {"serve": serve, "reliability": reliability, "placements": placements,
                                               "serve_recommend": serve_recommend, "quality": quality, "scale": scale}


def _read(reports: Path, name: str, command: str = "") -> dict[str, Any]:
    path = reports / f"{name}.json"
    if not path.is_file():
        raise ReadmeFiguresError(f"the README quotes {path}, which does not exist: run `rxrec bench {command or name}`")
    return json.loads(path.read_text())


def render(readme: str, reports: Path) -> str:
    """The README with every figures passage rendered from the reports (everything else untouched)."""
    def one(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise ReadmeFiguresError(f"README: unknown figures passage {name!r} (known: {', '.join(RENDERERS)})")
        return match[1] + RENDERERS[name](reports) + match[4]

    return BLOCK.sub(one, readme)


def passages(readme: str) -> dict[str, str]:
    """name -> text of each figures passage."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(readme)}


def register(bench: typer.Typer) -> None:
    @bench.command("readme")
    def readme_figures(
        check: Annotated[bool, typer.Option(help="only say whether the README matches the reports (exit 1 if not)")]
        = False,
    ) -> None:
        """Rewrite the README's quoted figures from reports/*.json (the passages between figures markers)."""
        from benchmarks.common import REPORTS

        current = README.read_text()
        try:
            fresh = render(current, REPORTS)
        except ReadmeFiguresError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        rendered = passages(fresh)
        stale = [n for n, body in passages(current).items() if rendered[n] != body]
        if check:
            typer.echo(f"README figures: {'differ from the reports in ' + ', '.join(stale) if stale else 'as reported'}")
            raise typer.Exit(1 if stale else 0)
        README.write_text(fresh)
        typer.echo(f"README figures rewritten from reports/: {', '.join(passages(fresh))} "
                   f"({'changed: ' + ', '.join(stale) if stale else 'no change'})")
