"""Great Expectations Data Docs for every validation run, kept per run under one folder.

Why: the markdown report says *that* a check failed; people reviewing a failed (or suspicious) data
drop want the GX pages of every suite, with each expectation and the value observed, and they want
last week's run next to today's. Layout under the root (`RXREC_DATA_DOCS_DIR`, else
`<workdir>/var/data_docs`; service state like MLflow's store, deliberately not a DVC output, so
`dvc repro` neither caches nor deletes it):

    index.html          every run, newest first
    <run>/index.html    the run: status, each suite with its GX page, the drift checks with observed values
    <run>/run.json      what the runs index lists
    <run>/gx/           the GX Data Docs site (SiteBuilder): validation results and expectation suites

`<run>` is `<dag_id>__<dag_run_id>` inside an Airflow task (both DAGs run validate and may share
a scheduled run id), else the UTC time of the run.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import html
import json
import os
import re
from pathlib import Path
from typing import Any

from pipelines.core.config import Paths
from pipelines.core.files import atomic_write_text, published_dir
from pipelines.validate.gate import CheckResult, SuiteResult, ValidationReport

DATA_DOCS_DIR_ENV = "RXREC_DATA_DOCS_DIR"  # where the runs are kept (a served folder in a shared deployment)
DATA_DOCS_URL_ENV = "RXREC_DATA_DOCS_URL"  # the URL that folder is served at, for links from MLflow/Airflow
INDEX = "index.html"
RUN_FILE = "run.json"
GX_SITE = "gx"
_SITE_NAME = "rxrec"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def data_docs_root(paths: Paths) -> Path:
    """`RXREC_DATA_DOCS_DIR` (relative to the work directory) or `var/data_docs`."""
    configured = os.environ.get(DATA_DOCS_DIR_ENV)
    return paths.root / configured if configured else paths.var / "data_docs"


def airflow_run_folder(dag_id: str | None, dag_run_id: str) -> str:
    """The run folder of an Airflow DAG run (what a link built outside the task, e.g. an operator link, needs)."""
    return _UNSAFE.sub("_", f"{dag_id}__{dag_run_id}" if dag_id else dag_run_id)


def _airflow_task_run() -> str | None:
    """The run folder of the DAG run this process works for, when it is an Airflow task (or its subprocess)."""
    dag_run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    return airflow_run_folder(os.environ.get("AIRFLOW_CTX_DAG_ID"), dag_run) if dag_run else None


def new_run_id(root: Path, now: dt.datetime | None = None) -> str:
    """The Airflow run's folder (a retried task replaces its own), else a new folder named by UTC time."""
    from_airflow = _airflow_task_run()
    if from_airflow:
        return from_airflow
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    run_id, n = stamp, 1
    while (root / run_id).exists():
        n += 1
        run_id = f"{stamp}-{n}"
    return run_id


def publish_data_docs(report: ValidationReport, root: Path, run_id: str | None = None) -> Path:
    """Render this validation's Data Docs into `<root>/<run_id>/`, refresh the runs index; returns the run's page.

    The folder is swapped in whole, so a retried task replaces its own run and a reader never sees
    half of one.
    """
    root.mkdir(parents=True, exist_ok=True)
    run_id = run_id or new_run_id(root)
    run_dir = root / run_id
    with published_dir(run_dir) as out:
        pages = _build_gx_site(report.suite_results, out / GX_SITE, run_id, report.created_at)
        (out / INDEX).write_text(_run_page(report, run_id, pages))
        (out / RUN_FILE).write_text(json.dumps(_run_entry(report, run_id), indent=2))
    _write_runs_index(root)
    return run_dir / INDEX


def data_docs_url(paths: Paths, run_id: str | None = None) -> str | None:
    """Link to a run's Data Docs (`run_id`: its folder name; default: this Airflow run's, else the newest).

    An `RXREC_DATA_DOCS_URL` base gives an http(s) link to the served folder, otherwise a file:// URI;
    None when that run published none (e.g. DVC skipped an unchanged validate stage).
    """
    root = data_docs_root(paths)
    run_id = run_id or _airflow_task_run() or next((r["run_id"] for r in _runs(root)), None)
    if run_id is None or not (root / run_id / INDEX).exists():
        return None
    base = os.environ.get(DATA_DOCS_URL_ENV)
    return f"{base.rstrip('/')}/{run_id}/{INDEX}" if base else (root / run_id / INDEX).resolve().as_uri()


# --------------------------------------------------------------------------- the GX site
def _build_gx_site(results: list[SuiteResult], site: Path, run_id: str, created_at: str) -> dict[str, str]:
    """GX's own Data Docs of the run's suites; returns suite name -> its validation page, relative to the run."""
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import expectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    context = gx.get_context(mode="ephemeral")
    context.add_data_docs_site(_SITE_NAME, {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    gx_run = RunIdentifier(run_name=run_id, run_time=dt.datetime.fromisoformat(created_at))
    identifiers: dict[str, Any] = {}
    for item in results:
        context.suites.add(item.suite)  # for the expectation-suite pages the site links to
        # Through JSON: the store serialises with `json`, which rejects the numpy scalars GX results hold.
        result = expectationSuiteValidationResultSchema.load(item.result.to_json_dict())
        result.meta.update(run_id=gx_run, validation_time=gx_run.run_time)  # as a ValidationDefinition run sets
        asset = (result.meta.get("active_batch_definition") or {}).get("data_asset_name")
        result.meta.setdefault("batch_spec", {})["data_asset_name"] = asset  # the page's "Data asset:" line
        key = ValidationResultIdentifier(ExpectationSuiteIdentifier(name=item.suite.name), gx_run, item.batch_id)
        context.validation_results_store.set(key, result)
        identifiers[item.suite.name] = key
    context.build_data_docs(site_names=[_SITE_NAME])
    _prune_static(site)
    pages = {}
    for name, key in identifiers.items():
        url = context.get_docs_sites_urls(resource_identifier=key, site_name=_SITE_NAME)[0]["site_url"]
        pages[name] = Path(url.removeprefix("file://")).relative_to(site.parent).as_posix()
    return pages


def _prune_static(site: Path) -> None:
    """GX copies 4.5 MB of static files (tutorial GIFs, fonts) into each site; keep only what its pages use."""
    pages = "".join(page.read_text() for page in site.rglob("*.html"))
    for asset in (site / "static").rglob("*"):
        if asset.is_file() and asset.name not in pages:
            asset.unlink()


# --------------------------------------------------------------------------- the run page and the runs index
_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;
vertical-align:top}th{background:#f3f3f3}.ok{color:#176f2c;font-weight:600}.fail{color:#b00020;font-weight:600}
.skip{color:#8a6d00;font-weight:600}code{font-size:.9em}"""


def _status(check: CheckResult) -> str:
    if check.skipped:
        return '<span class="skip">SKIP</span>'
    return '<span class="ok">ok</span>' if check.success else '<span class="fail">FAIL</span>'


def _text(value: Any) -> str:
    if value is None:  # a skipped check measured nothing
        return ""
    return html.escape(value if isinstance(value, str) else json.dumps(value, default=str))


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<tr>{''.join(f'<td>{c}</td>' for c in row)}</tr>" for row in rows)
    return f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{cells}</table>"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")


def _run_page(report: ValidationReport, run_id: str, pages: dict[str, str]) -> str:
    """One page per run: what passed, what failed, the drift checks with what this version measured."""
    status = '<span class="ok">PASSED</span>' if report.success else '<span class="fail">FAILED</span>'
    rows = ", ".join(f"{t}: {n:,} rows" for t, n in report.row_counts.items())
    suites = []
    for name in dict.fromkeys(c.suite for c in report.checks):
        checks = [c for c in report.checks if c.suite == name]
        failed = sum(not c.success and not c.skipped for c in checks)
        link = f'<a href="{html.escape(pages[name])}">validation results</a>' if name in pages else ""
        suites.append([html.escape(name or "schema (column presence and dtype, checked in pandas)"),
                       html.escape(", ".join(dict.fromkeys(c.table for c in checks))), str(len(checks)),
                       f'<span class="{"fail" if failed else "ok"}">{failed}</span>', link])
    drift = [[html.escape(c.suite), html.escape(c.where), f"<code>{html.escape(c.expectation)}</code>",
              html.escape(c.message), _text(c.observed), _status(c)]
             for c in report.checks if c.suite.endswith("_drift")]
    problems = [[_status(c), html.escape(c.line())] for c in report.failed + report.skipped]
    body = [
        f"<h1>Data validation {html.escape(run_id)}: {status}</h1>",
        (f"<p>{html.escape(rows)}; {len(report.failed)} failed, {len(report.skipped)} skipped, "
         f"{len(report.checks)} checks; {html.escape(report.created_at)}. "
         f'<a href="{GX_SITE}/{INDEX}">Great Expectations site</a> · <a href="../{INDEX}">all runs</a></p>'),
        "<h2>Suites</h2>", _table(["suite", "table", "checks", "failed", "Data Docs"], suites),
        "<h2>Drift checks</h2>", f"<p>{html.escape(report.drift or 'not run')}</p>",
    ]
    if drift:
        body.append(_table(["suite", "table.column", "expectation", "rule", "this version", "status"], drift))
    if problems:
        body += ["<h2>Failed and skipped checks</h2>", _table(["status", "check"], problems)]
    return _page(f"Data validation {run_id}", "\n".join(body))


def _run_entry(report: ValidationReport, run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "created_at": report.created_at,
            "published_at": dt.datetime.now(dt.UTC).isoformat(),  # orders runs validated within one second
            "success": report.success,
            "checks": len(report.checks), "failed": len(report.failed), "row_counts": report.row_counts,
            "drift": report.drift}


def _runs(root: Path) -> list[dict[str, Any]]:
    """Every published run under root, newest first (staging folders start with a dot and are left out)."""
    entries = []
    for run_file in root.glob(f"[!.]*/{RUN_FILE}"):
        try:
            entries.append(json.loads(run_file.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a folder someone else put there; it is not a run
    return sorted(entries, key=lambda e: e.get("published_at", ""), reverse=True)


def _write_runs_index(root: Path) -> None:
    """Rewrite root/index.html under a lock, so two runs publishing at once both end up listed."""
    with (root / ".index.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [[f'<a href="{html.escape(e["run_id"])}/{INDEX}">{html.escape(e["run_id"])}</a>',
                 html.escape(e.get("created_at", "")),
                 '<span class="ok">PASSED</span>' if e.get("success") else '<span class="fail">FAILED</span>',
                 f"{e.get('failed', '?')} of {e.get('checks', '?')}", html.escape(e.get("drift", ""))]
                for e in _runs(root)]
        body = ("<h1>Data validation runs</h1><p>Great Expectations Data Docs of every validation, newest first.</p>"
                + _table(["run", "validated at (UTC)", "status", "failed checks", "drift checks"], rows))
        atomic_write_text(root / INDEX, _page("Data validation runs", body))
