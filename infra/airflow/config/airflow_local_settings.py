"""Airflow imports this module first thing in every process; infra/airflow/launcher.py puts its folder on PYTHONPATH.

Why: each task and each parse of dags/retrain_and_promote.py runs in a fork of a long-lived component (the
scheduler's LocalExecutor workers, a Celery worker, the DAG processor), and starts by parsing the DAG file. The
file types its run form with the library's settings, whose model families bring torch; a task's link to its MLflow
run brings mlflow. Imported once here, in those parents, the forks find them loaded: a task's parse takes about
0.4 s instead of 2.5 s, and a DAG run of 25 tasks is a minute shorter on 2 cores. Third-party libraries only:
rxrec's own modules stay out of the parents, so each parse and each task still imports the code as it is now.
"""

from __future__ import annotations

import importlib
import sys

# Airflow copies every public name of this module into airflow.settings: export none.
__all__: list[str] = []

_FORKING_COMPONENTS = ("scheduler", "dag-processor", "worker")  # `airflow celery worker` included
_PRELOADED = ("torch", "pandas", "mlflow")


def _preload(argv: list[str]) -> None:
    if any(arg in _FORKING_COMPONENTS for arg in argv[1:3]):
        for name in _PRELOADED:
            importlib.import_module(name)


_preload(sys.argv)
