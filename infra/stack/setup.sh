#!/usr/bin/env bash
# System services of the distributed stack (`make stack`): PostgreSQL and Redis from Debian packages.
#
# Idempotent and quick when both are present. Installs with apt-get when missing (needs root, as on
# CI and this machine) without starting Debian's own services: no main PostgreSQL cluster is created
# and no Redis daemon is left running; infra/stack/stack.py runs its own instances on free ports
# under var/stack/. As root, PostgreSQL runs as the `postgres` system user (initdb refuses root).
set -euo pipefail

need_apt=()
pg_bin=""
if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
  pg_bin="$(dirname "$(command -v pg_ctl)")"
else
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
fi
[[ -n "$pg_bin" && -x "$pg_bin/pg_ctl" ]] || need_apt+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)

if ((${#need_apt[@]})); then
  if [[ "$(id -u)" != 0 ]]; then
    echo "error: ${need_apt[*]} missing and not root: install them (apt-get install ${need_apt[*]}) and rerun" >&2
    exit 1
  fi
  echo "▶ installing ${need_apt[*]} (apt-get)"
  # No main cluster on 5432 and no service started by the package scripts: the stack runs its own.
  mkdir -p /etc/postgresql-common
  grep -qs '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf \
    || echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
  fi
  trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

pg_bin="$(command -v pg_ctl >/dev/null 2>&1 && dirname "$(command -v pg_ctl)" || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
echo "stack system services: PostgreSQL $("$pg_bin/pg_ctl" --version | awk '{print $3}') ($pg_bin)," \
  "Redis $(redis-server --version | sed -E 's/.* v=([^ ]+).*/\1/')"
