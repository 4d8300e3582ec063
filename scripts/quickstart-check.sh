#!/usr/bin/env bash
# Walks the README's quick start on this checkout: `npm start` brings up the local stack and the
# service with no configuration, a write is accepted and confirmed, then everything is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
# A session of its own, so the interrupt reaches the service behind npm, not npm alone.
setsid npm start >"$log" 2>&1 &
server=$!
cleanup() {
  status=$?
  # A step that failed under set -e said nothing of why: the service's own last words do.
  if [ "$status" -ne 0 ]; then echo "quick start failed; the service's output ends:"; tail -20 "$log"; fi
  kill -INT -- "-$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  node bin/outpost.js stack down >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 1 120); do
  if curl -fsS localhost:8080/health >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "npm start exited"; exit 1; fi
  sleep 1
done
curl -fsS localhost:8080/health >/dev/null || { echo "no /health after 120 s"; exit 1; }
event=$(curl -fsS -XPOST localhost:8080/executed_obs_units/start -H 'content-type: application/json' \
  -d '{"obs_unit_id":"quickstart","instrument":"nirspec"}' | node -e 'process.stdin.on("data",d=>console.log(JSON.parse(d).event_id))')
for _ in $(seq 1 100); do
  # A refusal while polling (a replica still starting) is asked again, not the end of the check.
  state=$(curl -fsS "localhost:8080/events/$event" | node -e 'process.stdin.on("data",d=>console.log(JSON.parse(d).state))') || state=unreadable
  if [ "$state" = confirmed ]; then echo "quick start ok: event $event confirmed"; exit 0; fi
  sleep 0.2
done
echo "event $event not confirmed (state $state)"; exit 1
