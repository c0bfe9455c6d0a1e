# Airflow 3.3.2 with rxrec installed: the DAGs, the library they call and params.yaml, at /opt/rxrec.
# Used by docker-compose.yaml (CeleryExecutor) and the Helm values in infra/k8s/airflow-values.yaml
# (KubernetesExecutor: task pods run this image too). On GPU nodes torch finds CUDA; the same code runs on CPU.
FROM apache/airflow:3.3.2-python3.11
USER root
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends git curl && rm -rf /var/lib/apt/lists/*
COPY --chown=airflow:0 . /opt/rxrec
USER airflow
WORKDIR /opt/rxrec
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir "apache-airflow==3.3.2" -e . \
    && pip install --no-cache-dir "apache-airflow-providers-cncf-kubernetes"
ENV PYTHONPATH=/opt/rxrec:/opt/rxrec/infra/airflow/config RXREC_WORKDIR=/opt/rxrec/work
