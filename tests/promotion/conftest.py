"""Shared by the promotion tests: a local MLflow registry per test module."""

from __future__ import annotations

import pytest

from pipelines.core.retry import RetryPolicy
from pipelines.track.service import MlflowService


@pytest.fixture(scope="module")
def registry(tmp_path_factory, request) -> MlflowService:
    """One SQLite store per module (a fresh one costs seconds); each test registers its own model name."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    return MlflowService(f"sqlite:///{root / 'mlflow.db'}", "rxrec", root / "mlartifacts", RetryPolicy(attempts=1))
