#!/usr/bin/env bash
# MLflow tracking server + UI for rxrec, bound to 127.0.0.1 by default.
# Embedded default: the SQLite store and artifact folder the pipeline writes (var/).
# At scale, set MLFLOW_BACKEND_STORE_URI (e.g. postgresql://...) and MLFLOW_ARTIFACTS_DESTINATION (s3://...).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
store="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$root/var/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$root/var/mlartifacts}"
mkdir -p "$root/var"
echo "MLflow UI: http://$host:$port  (store: $store)"
exec mlflow server --backend-store-uri "$store" --artifacts-destination "$artifacts" \
  --host "$host" --port "$port" --workers 1
