# MLflow tracking server for rxrec: the release the project pins with its basic-auth extra (login), plus the
# PostgreSQL driver and boto3 for a Postgres store with artifacts in S3. Used by docker-compose.yaml and infra/k8s/mlflow.yaml.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg2-binary>=2.9" boto3
