"""Data-validation gate: GX suites for the catalogue/events contract and the gate that enforces them."""

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
    "enforce",
    "validate_tables",
    "write_report",
]
