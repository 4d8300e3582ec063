#!/usr/bin/env bash
# Entrypoint of the hot-standby replica: clones the primary on first start, then runs the
# image's own entrypoint, which finds an initialised data directory and only starts postgres.
set -Eeuo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
primary_host="${PRIMARY_HOST:-main}"
primary_port="${PRIMARY_PORT:-5432}"
# With password authentication instead of trust, -R then also writes it into primary_conninfo.
if [ -n "${POSTGRES_PASSWORD:-}" ]; then
  export PGPASSWORD="$POSTGRES_PASSWORD"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  # Anything else in a directory without PG_VERSION is an interrupted clone (or a wrong
  # mount); pg_basebackup refuses a non-empty target, and deleting data is not this script's
  # call.
  if [ -n "$(ls -A "$PGDATA")" ]; then
    echo "replica: $PGDATA is not empty but holds no cluster (interrupted clone?);" \
      "remove the replica volume and start again" >&2
    exit 1
  fi
  chown postgres:postgres "$PGDATA"
  chmod 0700 "$PGDATA"

  # depends_on waits for the primary's healthcheck, but a restart of the replica alone does
  # not, and the primary may be restarting too.
  until gosu postgres pg_isready -q -h "$primary_host" -p "$primary_port" -U postgres; do
    echo "replica: waiting for the primary at $primary_host:$primary_port" >&2
    sleep 2
  done

  # -R writes standby.signal and primary_conninfo; -X stream copies the WAL written during
  # the backup so the clone is consistent on its own; -c fast starts without waiting for
  # the primary's next checkpoint.
  gosu postgres pg_basebackup -h "$primary_host" -p "$primary_port" -U postgres \
    -D "$PGDATA" -R -X stream -c fast
  echo "replica: cloned from $primary_host:$primary_port" >&2
fi

# docker-entrypoint.sh drops to the postgres user and skips initdb on an existing cluster.
exec docker-entrypoint.sh postgres -c hot_standby=on "$@"
