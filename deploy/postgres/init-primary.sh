#!/usr/bin/env bash
# First start of the primary (run by docker-entrypoint.sh from /docker-entrypoint-initdb.d,
# as the postgres user, while a temporary server listens on the local socket only).
set -Eeuo pipefail

# pg_basebackup and the standby's WAL receiver connect with the `replication` pseudo-database,
# which `host all all …` does not match. Same method as the rest of the stack: trust inside
# the compose network (POSTGRES_HOST_AUTH_METHOD), scram when a password is set instead.
auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
echo "host replication all all ${auth}" >> "$PGDATA/pg_hba.conf"

# The service connects to `outpost`; created here so the image works without POSTGRES_DB.
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres <<'SQL'
SELECT 'CREATE DATABASE outpost'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'outpost')\gexec
SQL
