#!/usr/bin/env bash
# Makes sure the machine has what Outpost's local stack and tests run on: PostgreSQL server
# binaries with pg_cron, Redis, promtool and docker-compose (for validating deploy files).
# As root on Debian it installs what is missing; otherwise it prints the exact command.
set -euo pipefail

missing=()
pg_bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bindir" ] && [ -x "$pg_bindir/initdb" ] || missing+=(postgresql)
if [ -n "$pg_bindir" ]; then
  pg_version=$(basename "$(dirname "$pg_bindir")")
  [ -f "$("$pg_bindir/pg_config" --pkglibdir 2>/dev/null || echo /nonexistent)/pg_cron.so" ] || missing+=("postgresql-$pg_version-cron")
else
  missing+=(postgresql-15-cron)
fi
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

command_line="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts a default cluster and a Redis on the standard ports; Outpost uses its own.
  exit 0
fi
echo "missing system packages: ${missing[*]}" >&2
echo "install them with: sudo sh -c '$command_line'" >&2
exit 1
