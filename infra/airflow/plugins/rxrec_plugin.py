"""The rxrec Airflow plugin: registers the "MLflow run" operator extra link (dags/rxrec_links.py).

The operators carry the link themselves (MlflowLinkedPythonOperator, PromotionApproval), so the worker
stores each task's URL when it ends and the API server reads it back; the plugin names the link (Airflow
lists it under `airflow plugins`) without matching it to operator classes, which would make the API
server call `get_link` itself.

Airflow loads it from [core] plugins_folder, which infra/airflow/launcher.py (so the stack), compose and
the Helm values point at this folder. The link's code lives beside the DAGs that use it, so the DAGs
folder is made importable here (the API server does not parse DAGs, so nothing else puts it on sys.path).
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

if conf.get("core", "dags_folder") not in sys.path:
    sys.path.append(conf.get("core", "dags_folder"))

from rxrec_links import MlflowRunLink


class RxrecPlugin(AirflowPlugin):
    name = "rxrec"
    operator_extra_links: ClassVar[list[Any]] = [MlflowRunLink()]
