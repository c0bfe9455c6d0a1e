"""The hostname an Airflow task records (task_instance.hostname) when it runs on a stack Celery worker.

Both Celery workers of the local stack share one machine, so the default (the FQDN) would not say which
worker ran a task. Each worker sets RXREC_WORKER_HOSTNAME and points `[core] hostname_callable` here.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """RXREC_WORKER_HOSTNAME when set (a stack worker), else the machine's FQDN, as Airflow does."""
    return os.environ.get("RXREC_WORKER_HOSTNAME") or socket.getfqdn()
