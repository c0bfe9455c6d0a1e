"""The data-validation gate: run the GX suites on catalogue + events, report, and stop bad data.

`validate_tables` never raises on bad data; it always returns a `ValidationReport` (schema
problems that would crash GX become failed checks and the dependent checks are marked skipped).
`enforce` writes the report files and raises `DataValidationError` with a readable summary, which
is what the DVC stage / Airflow task surfaces to the user.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, PrivateAttr

from pipelines.core.config import ValidateSettings
from pipelines.data.schema import CATALOGUE_COLUMNS, EVENTS_COLUMNS
from pipelines.validate import suites as S
from pipelines.validate.profile import (
    SESSIONS,
    DataProfile,
    build_drift_suites,
    drift_status,
    profile_tables,
    session_lengths,
)

REPORT_JSON = "validation.json"
REPORT_MD = "validation.md"
MAX_EXAMPLES = 5

log = logging.getLogger(__name__)


class CheckResult(BaseModel):
    """One expectation on one table/column, as the report and the error message show it."""

    table: str
    expectation: str
    column: str | None = None
    success: bool
    suite: str = ""  # the GX suite it belongs to (its Data Docs page)
    observed: Any = None  # drift checks: this version's value, compared with the accepted profile
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[Any] = Field(default_factory=list)
    message: str = ""
    skipped: bool = False

    @property
    def where(self) -> str:
        return f"{self.table}.{self.column}" if self.column else self.table

    def line(self) -> str:
        """One readable line for the error summary."""
        parts = [f"{self.where}: {self.message} [{self.expectation}]"]
        if self.unexpected_count is not None:
            pct = f" ({self.unexpected_percent:.2f}%)" if self.unexpected_percent is not None else ""
            parts.append(f"{self.unexpected_count} row(s){pct}")
        if self.examples:
            parts.append(f"e.g. {_short(self.examples)}")
        return " - ".join(parts)


@dataclass(frozen=True)
class SuiteResult:
    """One GX suite with its validation result, kept in memory for the Data Docs of the run."""

    suite: Any  # gx.ExpectationSuite
    result: Any  # gx ExpectationSuiteValidationResult
    batch_id: str


class ValidationReport(BaseModel):
    """Outcome of one gate run; written next to the validated data and logged by the DAG."""

    success: bool
    checks: list[CheckResult]
    row_counts: dict[str, int]
    elapsed_s: float
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    reference_time: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    drift: str = ""  # whether/against what the distribution checks ran
    profile: DataProfile | None = None  # this version's distribution (becomes the reference if it passes)
    accepted: DataProfile | None = None  # the reference it was compared with
    data_docs: str | None = None  # index.html of this run's Data Docs, once published
    _suite_results: list[SuiteResult] = PrivateAttr(default_factory=list)

    @property
    def suite_results(self) -> list[SuiteResult]:
        """The GX results behind the checks (not serialised: only the run that validated has them)."""
        return self._suite_results

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and not c.skipped]

    @property
    def skipped(self) -> list[CheckResult]:
        return [c for c in self.checks if c.skipped]

    def to_json(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2))
        return path

    def to_markdown(self) -> str:
        """A table a person can read in the Airflow log, MLflow artifacts or a PR."""
        status = "PASSED" if self.success else "FAILED"
        rows = ", ".join(f"{t}: {n:,} rows" for t, n in self.row_counts.items())
        lines = [
            f"# Data validation: {status}",
            "",
            (
                f"{rows}; {len(self.failed)} failed, {len(self.skipped)} skipped, {len(self.checks)} checks; "
                f"{self.elapsed_s:.2f} s; {self.created_at}"
            ),
            "",
            f"Distribution checks: {self.drift or 'not run'}",
            "",
            "| status | table.column | check | expectation | bad rows | % | examples |",
            "|---|---|---|---|---:|---:|---|",
        ]
        order = {"FAIL": 0, "SKIP": 1, "ok": 2}

        def status_of(c: CheckResult) -> str:
            return "SKIP" if c.skipped else ("ok" if c.success else "FAIL")

        for c in sorted(self.checks, key=lambda c: order[status_of(c)]):
            count = "" if c.unexpected_count is None else f"{c.unexpected_count:,}"
            pct = "" if c.unexpected_percent is None else f"{c.unexpected_percent:.2f}"
            examples = _md(_short(c.examples)) if c.examples else ""
            lines.append(
                f"| {status_of(c)} | {c.where} | {_md(c.message)} | `{c.expectation}` | {count} | {pct} "
                f"| {examples} |"
            )
        if self.profile is not None:
            lines += ["", "## Distribution", "", "| metric | accepted | this version |", "|---|---|---|"]
            now = self.profile.model_dump(exclude={"created_at"})
            before = self.accepted.model_dump(exclude={"created_at"}) if self.accepted else {}
            for key, value in now.items():
                lines.append(f"| {key} | {_md(_short([before.get(key)])[1:-1]) if before else ''} "
                             f"| {_md(_short([value])[1:-1])} |")
        return "\n".join(lines) + "\n"

    def summary(self, report_path: Path | None = None) -> str:
        """Readable failure summary (the DataValidationError message)."""
        if self.success:
            return "data validation passed"
        rows = ", ".join(f"{t}: {n:,} rows" for t, n in self.row_counts.items())
        head = f"data validation failed: {len(self.failed)} of {len(self.checks)} checks failed ({rows})"
        lines = [head] + [f"  - {c.line()}" for c in self.failed]
        if self.skipped:
            names = "; ".join(f"{c.where}: {c.message}" for c in self.skipped)
            lines.append(f"  ({len(self.skipped)} check(s) skipped because of the problems above: {names})")
        if report_path is not None:
            lines.append(f"full report: {report_path} (and {report_path.with_suffix('.json').name})")
        if self.data_docs:
            lines.append(f"data docs: {self.data_docs}")
        return "\n".join(lines)


class DataValidationError(RuntimeError):
    """Raised by `enforce`; its str() lists each failed check and points to the report file."""

    def __init__(self, report: ValidationReport, report_path: Path | None = None) -> None:
        self.report = report
        self.report_path = report_path
        super().__init__(report.summary(report_path))


# --------------------------------------------------------------------------- helpers
def _jsonable(value: Any) -> Any:
    """Example values as plain JSON types (timestamps as ISO text, numpy scalars unboxed)."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool):
        return value
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _short(examples: list[Any], width: int = 300) -> str:
    text = json.dumps(examples, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _exception_text(exception_info: Any) -> str | None:
    """GX puts exceptions either flat or keyed by metric id; return the first message, if any."""
    if not isinstance(exception_info, dict):
        return None
    if exception_info.get("raised_exception"):
        return str(exception_info.get("exception_message"))
    for value in exception_info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _schema_checks(table: str, problems: S.ColumnProblems, contract: dict[str, str]) -> list[CheckResult]:
    """Column presence and dtype family, computed in pandas before GX (see suites.py for why)."""
    out: list[CheckResult] = []
    for col, family in contract.items():
        if col in problems.missing:
            continue  # expect_table_columns_to_match_set reports it, with the list of missing names
        wrong = problems.wrong_dtype.get(col)
        out.append(
            CheckResult(
                table=table,
                expectation="expect_column_dtype_family",
                column=col,
                success=wrong is None,
                examples=[wrong[1]] if wrong else [],
                message=(f"dtype must be {family}, got {wrong[1]}" if wrong else f"dtype is {family}"),
            )
        )
    return out


def _example_rows(frame: pd.DataFrame, bad: pd.Series, columns: list[str]) -> list[dict[str, Any]]:
    cols = [c for c in columns if c in frame.columns]
    sample = frame.loc[bad.to_numpy(), cols].head(MAX_EXAMPLES)
    names = {S.PREV_TS_COL: "previous_timestamp", S.LAUNCH_TS_COL: "launch_ts"}
    return [
        {names.get(k, k): _jsonable(v) for k, v in row.items()} for row in sample.to_dict(orient="records")
    ]


def _to_check(result: Any, frame: pd.DataFrame, suite: str) -> CheckResult:
    """GX ExpectationValidationResult -> CheckResult with counts, examples and plain words."""
    config = result.expectation_config
    meta = config.meta or {}
    res = result.result or {}
    kind = config.type
    error = _exception_text(result.exception_info)
    message = meta.get("plain", kind)
    observed: Any = None
    examples: list[Any] = []
    count = res.get("unexpected_count")
    pct = res.get("unexpected_percent")
    if error:
        message = f"{message} (could not be evaluated: {error})"
    elif meta.get("drift"):
        observed = res.get("observed_value")
        if isinstance(observed, dict) and "values" in observed:  # quantiles
            observed = observed["values"]
        if kind == "expect_column_values_to_be_in_set" and pct is not None:
            observed = f"{pct:.2f}% unknown"
            examples = [_jsonable(v) for v in dict.fromkeys(res.get("partial_unexpected_list") or [])][:MAX_EXAMPLES]
        elif isinstance(observed, float):
            observed = f"{observed:.4g}"
        observed = _jsonable(observed)
        if not result.success:
            message = f"{message}; this version: {observed}"
    elif kind == "expect_table_columns_to_match_set":
        missing = ((res.get("details") or {}).get("mismatched") or {}).get("missing") or []
        examples = sorted(missing)
        if missing:
            message = f"{message}; missing: {', '.join(sorted(missing))}"
    elif kind == "expect_table_row_count_to_be_between":
        message = f"{message}; has {res.get('observed_value')}"
    elif "example_columns" in meta and not result.success:
        column = config.kwargs["column"]
        examples = _example_rows(frame, ~frame[column].astype(bool), meta["example_columns"])
    elif kind == "expect_column_values_to_not_be_null":
        # The values are all null; the row positions are what helps.
        examples = [{"row": _jsonable(i)} for i in (res.get("partial_unexpected_index_list") or [])]
        examples = examples[:MAX_EXAMPLES]
    else:
        examples = [_jsonable(v) for v in (res.get("partial_unexpected_list") or [])]
        # Unique/in-set list every bad row; show each bad value once.
        examples = list(dict.fromkeys(json.dumps(e, default=str) for e in examples))
        examples = [json.loads(e) for e in examples][:MAX_EXAMPLES]
    return CheckResult(
        suite=suite,
        table=meta.get("table", "?"),
        expectation=kind,
        column=meta.get("column", config.kwargs.get("column")),
        success=bool(result.success) and not error,
        unexpected_count=None if count is None else int(count),
        unexpected_percent=None if pct is None else float(pct),
        examples=examples,
        message=message,
        observed=observed,
    )


def _run_suite(
    context: Any,
    name: str,
    frame: pd.DataFrame,
    build: S.SuiteBuild,
    parameters: dict[str, Any] | None = None,
) -> tuple[list[CheckResult], SuiteResult | None]:
    """The suite's checks (run ones, then skipped ones) and its GX result (None when nothing could run)."""
    suite_name = build.suite.name
    skipped = [
        CheckResult(
            suite=suite_name,
            table=s["table"],
            expectation=s["expectation"],
            column=s["column"],
            success=False,
            skipped=True,
            message=f"{s['plain']} (skipped: {s['reason']})",
        )
        for s in build.skipped
    ]
    if not build.suite.expectations:
        return skipped, None
    batch_definition = (
        context.data_sources.add_pandas(f"rxrec_{name}")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(name)
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    outcome = batch.validate(
        build.suite,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
        expectation_parameters=parameters or None,
    )
    checks = [_to_check(r, frame, suite_name) for r in outcome.results]
    return checks + skipped, SuiteResult(suite=build.suite, result=outcome, batch_id=batch.id)


def _gx_context() -> Any:
    """A throwaway in-memory GX context: no files, no analytics, no progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


# --------------------------------------------------------------------------- API
def validate_tables(
    catalogue: pd.DataFrame,
    events: pd.DataFrame,
    settings: ValidateSettings,
    *,
    now: pd.Timestamp | None = None,
    source: dict[str, Any] | None = None,
    accepted: DataProfile | None = None,
) -> ValidationReport:
    """Validate both tables against the contract; the inputs are not modified.

    `source` is the raw folder's source.json (dataset, signature); `accepted` the profile of the
    last accepted version: distribution checks run when both come from the same source.

    `now` (default: the current UTC time) is the latest allowed event timestamp; tz-aware
    values are converted to UTC, naive ones are taken as UTC.
    """
    start = time.perf_counter()
    reference = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    if reference.tzinfo is not None:
        reference = reference.tz_convert("UTC").tz_localize(None)

    cat_problems = S.column_problems(catalogue, CATALOGUE_COLUMNS)
    ev_problems = S.column_problems(events, EVENTS_COLUMNS)
    cat_frame = S.prepare_catalogue(catalogue, cat_problems)
    ev_frame = S.prepare_events(events, cat_frame, ev_problems, cat_problems)

    known_ids: list[int] | None = None
    if "item_id" in cat_problems.typed:
        known_ids = [int(v) for v in pd.unique(cat_frame["item_id"].dropna())]
    ts_min: pd.Timestamp | None = None
    if "launch_ts" in cat_problems.typed and cat_frame["launch_ts"].notna().any():
        ts_min = cat_frame["launch_ts"].min() - S.LAUNCH_SLACK

    context = _gx_context()  # suites need an active context (GX looks it up globally)
    cat_build = S.build_catalogue_suite(settings, cat_problems)
    ev_build = S.build_events_suite(
        settings,
        ev_problems,
        known_item_ids=known_ids,
        ts_min=ts_min,
        ts_max=reference,
        derived_columns=[c for c in (S.SESSION_ORDER_COL, S.AFTER_LAUNCH_COL) if c in ev_frame.columns],
    )

    checks: list[CheckResult] = []
    suite_results: list[SuiteResult] = []

    def run(name: str, frame: pd.DataFrame, build: S.SuiteBuild, parameters: dict[str, Any] | None = None) -> None:
        suite_checks, suite_result = _run_suite(context, name, frame, build, parameters)
        checks.extend(suite_checks)
        if suite_result is not None:
            suite_results.append(suite_result)

    checks += _schema_checks(S.CATALOGUE, cat_problems, CATALOGUE_COLUMNS)
    run(S.CATALOGUE, cat_frame, cat_build)
    checks += _schema_checks(S.EVENTS, ev_problems, EVENTS_COLUMNS)
    params = {S.KNOWN_IDS_PARAM: known_ids} if known_ids is not None else None
    run(S.EVENTS, ev_frame, ev_build, params)

    profile = profile_tables(cat_frame, ev_frame, cat_problems, ev_problems, source)
    drift = drift_status(settings, accepted, profile)
    if settings.drift_checks and accepted is not None and accepted.signature == profile.signature:
        reference_profile = accepted if known_ids is not None else accepted.model_copy(
            update={"unknown_item_share": None})
        builds = build_drift_suites(settings, reference_profile, cat_problems, ev_problems)
        run("catalogue_drift", cat_frame, builds[S.CATALOGUE])
        run("events_drift", ev_frame, builds[S.EVENTS], params)
        sessions = session_lengths(ev_frame) if "session_id" in ev_problems.present else ev_frame.iloc[:0]
        run(SESSIONS, sessions, builds[SESSIONS])

    report = ValidationReport(
        success=all(c.success for c in checks),
        checks=checks,
        row_counts={S.CATALOGUE: len(catalogue), S.EVENTS: len(events)},
        elapsed_s=round(time.perf_counter() - start, 3),
        reference_time=reference.isoformat(),
        settings=settings.model_dump(),
        drift=drift,
        profile=profile,
        accepted=accepted,
    )
    report._suite_results = suite_results
    log.info("data validation %s in %.2fs", "passed" if report.success else "failed", report.elapsed_s)
    return report


def write_report(report: ValidationReport, report_dir: Path | str) -> tuple[Path, Path]:
    """Write validation.json and validation.md into report_dir; returns both paths."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path = report.to_json(report_dir / REPORT_JSON)
    md_path = report_dir / REPORT_MD
    md_path.write_text(report.to_markdown())
    return json_path, md_path


def enforce(report: ValidationReport, report_dir: Path | str) -> ValidationReport:
    """Write the report files, then raise DataValidationError if any check failed."""
    _, md_path = write_report(report, report_dir)
    if not report.success:
        raise DataValidationError(report, md_path)
    return report
