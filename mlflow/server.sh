#!/usr/bin/env bash
# MLflow tracking server + UI for rxrec, bound to 127.0.0.1 by default.
# Embedded default: the SQLite store and artifact folder the pipeline writes (var/).
# At scale, set MLFLOW_BACKEND_STORE_URI (e.g. postgresql://...) and MLFLOW_ARTIFACTS_DESTINATION (s3://...).
#
# Security:
# - MLflow 3's host-header check stays on: requests whose Host is not localhost / a private IP are refused
#   (DNS-rebinding protection). Serving under a public name: set MLFLOW_ALLOWED_HOSTS=name,name:port
#   (never '*', never --disable-security-middleware).
# - Login: RXREC_MLFLOW_AUTH=basic-auth runs MLflow's basic-auth app (what the `stack` profile does). The
#   admin comes from MLFLOW_AUTH_ADMIN_USERNAME (default admin) and MLFLOW_AUTH_ADMIN_PASSWORD (required);
#   the user store is MLFLOW_AUTH_DATABASE_URI (default sqlite:///var/mlflow-auth.db), the CSRF key
#   MLFLOW_FLASK_SERVER_SECRET_KEY (random per start when unset). Clients log in with
#   MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. The `local` profile stays open on 127.0.0.1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
store="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$root/var/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$root/var/mlartifacts}"
mkdir -p "$root/var"
extra=()
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  if [[ "$MLFLOW_ALLOWED_HOSTS" == *"*"* ]]; then
    echo "error: MLFLOW_ALLOWED_HOSTS=$MLFLOW_ALLOWED_HOSTS would turn off the host-header check; list host names" >&2
    exit 2
  fi
  extra+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
login="none (open; bound to $host)"
case "${RXREC_MLFLOW_AUTH:-none}" in
  none) ;;
  basic-auth)
    if [[ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]]; then
      echo "error: RXREC_MLFLOW_AUTH=basic-auth needs MLFLOW_AUTH_ADMIN_PASSWORD in the environment" >&2
      exit 2
    fi
    export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
    auth_db="${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$root/var/mlflow-auth.db}"
    auth_ini="${MLFLOW_AUTH_CONFIG_PATH:-$root/var/mlflow-basic-auth.ini}"
    mkdir -p "$(dirname "$auth_ini")"
    sed "s|@DATABASE_URI@|$auth_db|" "$root/mlflow/basic_auth.ini" > "$auth_ini"
    export MLFLOW_AUTH_CONFIG_PATH="$auth_ini"
    # The auth app's CSRF key: from the environment (same on every server behind one name), else random
    # per start (a restart then only logs UI sessions out).
    if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
      MLFLOW_FLASK_SERVER_SECRET_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
      export MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
    extra+=(--app-name basic-auth)
    login="basic-auth, admin user $MLFLOW_AUTH_ADMIN_USERNAME"
    ;;
  *)
    echo "error: RXREC_MLFLOW_AUTH=${RXREC_MLFLOW_AUTH} is not one of: none, basic-auth" >&2
    exit 2
    ;;
esac
# MLflow 3's job runner (huey consumers for GenAI scorers, prompt optimisation and trace roll-ups) is off:
# rxrec uses none of it, and on a 2-core box its seven extra Python processes cost seconds of CPU at every
# start and can outlive a SIGTERM by minutes. MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true turns it back on.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
echo "MLflow UI: http://$host:$port  (store: $store; login: $login)"
exec mlflow server --backend-store-uri "$store" --artifacts-destination "$artifacts" \
  --host "$host" --port "$port" --workers 1 "${extra[@]}"
