"""Data-validation gate: GX suites for the catalogue/events contract, the gate that enforces them, Data Docs."""

from pipelines.validate.data_docs import airflow_run_folder, data_docs_url, publish_data_docs
from pipelines.validate.gate import (
    CheckResult,
    DataValidationError,
    ValidationReport,
    enforce,
    validate_tables,
    write_report,
)

__all__ = [
    "CheckResult",
    "DataValidationError",
    "ValidationReport",
    "airflow_run_folder",
    "data_docs_url",
    "enforce",
    "publish_data_docs",
    "validate_tables",
    "write_report",
]
