"""Shared fixtures: a tiny generated world run through the pipeline once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.core.config import Paths, Settings, load_settings

# Every stage a test runs (in-process or under `dvc repro`) is held to its declaration: a file of the work
# directory's data folders that it touches without declaring it fails the stage (pipelines/stages/declare.py).
os.environ.setdefault("RXREC_STRICT_IO", "1")

# Small enough for seconds, big enough that every stage has real work (and GPT4Rec can learn).
TINY = [
    "data.n_products=150",
    "data.n_users=500",
    "data.sessions_per_user=3",
    "validate.min_products=50",
    "validate.min_events=200",
    "graph.walks_per_node=4",
    "graph.walk_length=12",
    "prod2vec.dim=32",
    "prod2vec.epochs=2",
    "gpt4rec.dim=32",
    "gpt4rec.max_len=20",
    "gpt4rec.epochs=3",
    "gpt4rec.batch_size=64",
    "export.parity_sessions=64",
]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_settings(tiny_overrides) -> Settings:
    return load_settings(overrides=tiny_overrides)


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty work directory; stages write data/, artifacts/, reports/, var/ there."""
    monkeypatch.setenv("RXREC_WORKDIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, tiny_overrides) -> Path:
    """A work directory where every stage up to `export_onnx` has run on the tiny world.

    Shared by tests that need trained artifacts; they must not modify it.
    """
    from pipelines.stages import run_stage

    root = tmp_path_factory.mktemp("trained")
    previous = os.environ.get("RXREC_WORKDIR")
    os.environ["RXREC_WORKDIR"] = str(root)
    try:
        for name in ("generate", "validate", "sequences", "prod2vec", "train_popularity", "train_gpt4rec",
                     "evaluate", "export_onnx"):
            run_stage(name, tiny_overrides, workdir=root)
    finally:
        if previous is None:
            os.environ.pop("RXREC_WORKDIR", None)
        else:
            os.environ["RXREC_WORKDIR"] = previous
    return root


@pytest.fixture(scope="session")
def trained_paths(trained_workdir) -> Paths:
    return Paths(trained_workdir)


@pytest.fixture(autouse=True)
def _mlflow_http_environment() -> Iterator[None]:
    """Each test starts from the MLflow HTTP settings the session had: MlflowService writes its retry
    policy's timeout into the process environment (MLflow reads it nowhere else), and a test's 2 s policy
    must not become the next test's, on whichever worker it runs."""
    names = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    saved = {name: os.environ.get(name) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# ---------------------------------------------------------------- two workers (`make test`, `make test-fast`)
# pytest-xdist's --dist loadfile keeps a test module on one worker (its module fixtures are built once). Two
# refinements, made here because the controller sees only test ids: the folder of tests that share the
# session's real Airflow (tests/e2e/airflow/) is one unit of work, so one Airflow and one pair of retrain runs
# serve them all; and the longest units start first (that folder, then the other end-to-end modules, then by
# test count), so neither worker is left with a long tail.
SHARED_AIRFLOW = "tests/e2e/airflow/"


def _unit(nodeid: str) -> str:
    return SHARED_AIRFLOW if nodeid.startswith(SHARED_AIRFLOW) else nodeid.split("::", 1)[0]


def _rank(unit: str) -> int:
    return 0 if unit == SHARED_AIRFLOW else 1 if unit.startswith("tests/e2e/") else 2


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedAirflowLongestFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

        def _assign_work_unit(self, node) -> None:
            first = min(self.workqueue, key=_rank)  # the queue is by test count; the first of the lowest rank
            self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return SharedAirflowLongestFirst(config, log)


# The reliability ledger (tests/ledger.py): the `ledger` fixture and the hooks that write records.
pytest_plugins = ["tests.ledger"]
