#!/usr/bin/env bash
# Makes sure the machine has what Outpost's local stack and tests run on: PostgreSQL server
# binaries with pg_cron, and Redis; with --deploy-tools also promtool and docker-compose, which
# only validate the deploy files (scripts/check-deploy.sh, in CI).
# As root on Debian it installs what is missing; otherwise it prints the exact command.
set -euo pipefail
deploy_tools=false
[ "${1:-}" = --deploy-tools ] && deploy_tools=true

# tsx's --import hook (the tests, the CLI from a checkout) needs Node 20.6 or later; Debian 12's
# own nodejs package is 18, which npm ci only warns about.
if ! node -e 'const [major, minor] = process.versions.node.split(".").map(Number);
  process.exit(major > 20 || (major === 20 && minor >= 6) ? 0 : 1)' 2>/dev/null; then
  echo "Node.js $(node --version 2>/dev/null || echo 'is missing'): Outpost needs 20.6 or later (nodejs.org, or NodeSource's Debian packages)" >&2
  exit 1
fi

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
if $deploy_tools; then
  command -v curl >/dev/null || missing+=(curl) # the quick start's check asks /health with it
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
fi

# The local stack's fixed ports (DESIGN §10) lie in Linux's ephemeral range (32768-60999): an
# outgoing connection that is handed one of them as its local port makes the stack's server fail
# to bind it, now and then. Reserved, the kernel never hands them out.
stack_ports=(55432 55433 56379)
reserved_file=/proc/sys/net/ipv4/ip_local_reserved_ports
is_reserved() {
  tr ',' '\n' <"$reserved_file" | awk -F- -v port="$1" \
    'NF == 1 && $1 == port { found = 1 } NF == 2 && $1 <= port && port <= $2 { found = 1 } END { exit !found }'
}
if [ -r "$reserved_file" ]; then
  unreserved=()
  for port in "${stack_ports[@]}"; do
    is_reserved "$port" || unreserved+=("$port")
  done
  if [ ${#unreserved[@]} -gt 0 ]; then
    current=$(cat "$reserved_file")
    wanted="${current:+$current,}$(IFS=,; echo "${unreserved[*]}")"
    if [ -w "$reserved_file" ] && echo "$wanted" >"$reserved_file" 2>/dev/null; then
      echo "reserved the local stack's ports ${unreserved[*]} (net.ipv4.ip_local_reserved_ports)" >&2
    else
      echo "note: the local stack's ports ${unreserved[*]} can be taken now and then by outgoing connections; reserve them with: sudo sysctl -w net.ipv4.ip_local_reserved_ports=$wanted" >&2
    fi
  fi
fi

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
